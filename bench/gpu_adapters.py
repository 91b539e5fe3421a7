"""vLLM on a GPU: generation throughput with LoRA adapters against the base model, one run.

    python bench/gpu_adapters.py --model DIR [--adapters 16] [--concurrency 64] [--tokens 128] [--rounds 12]

Starts vLLM's OpenAI server with the serving sidecar's own command line (serving/vllm.py:
runtime LoRA loading, --max-loras, --max-lora-rank), loads `--adapters` random rank-16 PEFT
adapters on every linear layer (B not zero, so each changes the output), and sends
`--concurrency` concurrent completions of exactly `--tokens` tokens (ignore_eos) for each mix:
base only, one adapter, 4, 8 and 16 adapters round robin. The mixes alternate
inside each round so drift hits all of them; reported per mix: completion tokens/s per round, the
median, and the ratio to the base in the same round (target >= 0.85x with <= 8 active adapters).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from service.settings import BaseModelEntry, Settings  # noqa: E402
from serving.vllm import command, environment  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def make_adapters(model: Path, out: Path, n: int, rank: int) -> list[Path]:
    """Random LoRA adapters of the shape training writes (all linear layers), B drawn non-zero."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model, torch_dtype=torch.bfloat16)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                  "gate_proj", "up_proj", "down_proj"])
    peft = get_peft_model(base, config)
    paths = []
    for i in range(n):
        torch.manual_seed(1000 + i)
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
        path = out / f"adapter-{i}"
        peft.save_pretrained(path)
        paths.append(path)
    return paths


async def one(http: httpx.AsyncClient, model: str, tokens: int) -> int:
    r = await http.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": tokens,
                                                  "temperature": 0, "ignore_eos": True})
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"]


async def mix(http: httpx.AsyncClient, models: list[str], concurrency: int, tokens: int) -> float:
    start = time.perf_counter()
    done = await asyncio.gather(*(one(http, models[i % len(models)], tokens) for i in range(concurrency)))
    return sum(done) / (time.perf_counter() - start)


async def bench(url: str, key: str, names: list[str], args: argparse.Namespace) -> dict:
    mixes = {"base": ["base"], **{f"{n} adapter{'s' if n > 1 else ''}": names[:n]
                                  for n in (1, 4, 8, 16) if n <= len(names)}}
    async with httpx.AsyncClient(base_url=url, timeout=600, headers={"Authorization": f"Bearer {key}"},
                                 limits=httpx.Limits(max_connections=args.concurrency + 8)) as http:
        for name, path in zip(names, args.paths):
            r = await http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
            assert r.status_code == 200, r.text
        for models in mixes.values():  # warm-up: CUDA graphs, each adapter's first load onto the GPU
            await mix(http, models, args.concurrency, 16)
        rounds: dict[str, list[float]] = {k: [] for k in mixes}
        for i in range(args.rounds):
            order = list(mixes) if i % 2 == 0 else list(reversed(mixes))
            for k in order:
                rounds[k].append(await mix(http, mixes[k], args.concurrency, args.tokens))
    return rounds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/adapters-bench"))
    ap.add_argument("--adapters", type=int, default=16)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--memory-fraction", type=float, default=0.5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    args.paths = make_adapters(args.model, args.work, args.adapters, args.rank)
    print(f"{args.adapters} adapters made in {time.perf_counter() - t:.1f} s", flush=True)
    settings = Settings(base_models=(BaseModelEntry(alias="base", source=str(args.model)),), serve_model="base",
                        serving_api_key="bench-key", vllm_port=8011, vllm_max_loras=16,
                        vllm_max_cpu_loras=max(16, args.adapters), max_lora_rank=args.rank,
                        vllm_memory_fraction=args.memory_fraction, vllm_max_model_len=2048)
    cmd = command(settings)
    print("vLLM:", " ".join(cmd), flush=True)
    log = open(args.work / "vllm.log", "w")
    proc = subprocess.Popen(cmd, env=environment(settings), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{settings.vllm_port}"
    t = time.perf_counter()
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"vLLM exited {proc.returncode}; see {args.work / 'vllm.log'}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        print(f"vLLM ready in {time.perf_counter() - t:.1f} s", flush=True)
        names = [f"a{i}" for i in range(args.adapters)]
        rounds = asyncio.run(bench(url, "bench-key", names, args))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    base = rounds["base"]
    print(f"\n{args.concurrency} concurrent completions x {args.tokens} tokens, rank {args.rank}, "
          f"{args.rounds} rounds (mixes alternate)")
    print("| mix | tokens/s per round | median | vs base (same round) |")
    print("|---|---|---|---|")
    for k, v in rounds.items():
        ratios = [x / b for x, b in zip(v, base)]
        print(f"| {k} | {', '.join(f'{x:,.0f}' for x in v)} | {statistics.median(v):,.0f} | "
              f"{', '.join(f'{r:.3f}' for r in ratios)} |")
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "cmd": cmd, "env": {
            k: v for k, v in os.environ.items() if k.startswith("VLLM")}}, indent=1))


if __name__ == "__main__":
    main()
