"""The serving-contract check on CUDA vLLM (issue 33): the training side's record, made the way the
training child makes it (service/training/samples.CheckRecorder, transformers + PEFT, bf16 on
the GPU), against vLLM's prompt_logprobs for the same adapter (serving/check.py), one run.

    python bench/gpu_check.py --model DIR

Random weights give flat distributions, so this shows that the path works on CUDA vLLM and how
far the two implementations' numbers are apart, not how well an altered adapter is caught (the
CPU test does that with a trained adapter).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from gpu_adapters import make_adapters  # noqa: E402

from service.settings import BaseModelEntry, Settings  # noqa: E402
from serving import check  # noqa: E402
from serving.vllm import VLLMClient, command, environment  # noqa: E402

TEXT = ("The lighthouse keeper climbed the stairs every evening at dusk, counting the steps as his "
        "father had, and lit the lamp that ships had trusted for a hundred years.")


def record(model_dir: Path, adapter: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from service.training.samples import CheckRecorder

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(TEXT * 3)["input_ids"][:200]
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda()
    model = PeftModel.from_pretrained(base, adapter)
    CheckRecorder(None, [("probe", ids)], "transformers", quantized=False).write(model, adapter)


async def served(settings: Settings, adapter: Path) -> None:
    client = VLLMClient(settings)
    await client.load("a0", str(adapter))
    rec = check.read(adapter)
    got = [await client.prompt_logprobs("a0", seq.ids) for seq in rec.sequences]
    worst_lp = max(abs(lp - t) for seq, g in zip(rec.sequences, got) for t, (lp, _) in zip(seq.logprobs, g))
    top = max(math.exp(t) for seq in rec.sequences for t in seq.logprobs)
    outcome = check.compare(rec, got, tolerance=0.3)
    print(f"check passed: {outcome.tokens} tokens, worst |dp| {outcome.worst}, mean |dp| {outcome.mean}, "
          f"worst |dlogp| {worst_lp:.4f}, largest trained p {top:.4f}")
    await client.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/check-bench"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    [adapter] = make_adapters(args.model, args.work, 1, 16)
    record(args.model, adapter)
    settings = Settings(base_models=(BaseModelEntry(alias="base", source=str(args.model)),), serve_model="base",
                        serving_api_key="bench-key", vllm_port=8012, max_lora_rank=16,
                        vllm_memory_fraction=0.3, vllm_max_model_len=2048)
    proc = subprocess.Popen(command(settings), env=environment(settings),
                            stdout=open(args.work / "vllm.log", "w"), stderr=subprocess.STDOUT)
    try:
        t = time.perf_counter()
        while not _up():
            if proc.poll() is not None:
                raise SystemExit(f"vLLM exited {proc.returncode}: {(args.work / 'vllm.log').read_text()[-2000:]}")
            time.sleep(1)
        print(f"vLLM ready in {time.perf_counter() - t:.0f} s")
        asyncio.run(served(settings, adapter))
    finally:
        proc.terminate()
        proc.wait(60)


def _up() -> bool:
    try:
        return httpx.get("http://127.0.0.1:8012/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
