"""Peak GPU memory of one QLoRA step at fixed shapes, with and without gradient checkpointing,
against the memory plan's estimate (issue 11: the plan decides when checkpointing can go).

    python bench/activation_memory.py --tokenizer DIR [--shapes 1b,3b,8b] [--out results.md]

For each shape: builds a random-weight Llama (bench/make_llama.py), then in one child process per
checkpointing mode loads it as the service does (service.training.backends.load: Unsloth, QLoRA
r=16 on all linear layers) and runs full optimizer steps (forward, backward, AdamW) on random
token batches of each (rows x width). Every row is full width, so the step holds exactly
rows x width tokens. Peak allocated and reserved are read per case after empty_cache and a reset
of the peak counters. Prints one JSON line per case and a table of plan / measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = [(2, 1024), (8, 1024), (8, 2048), (4, 4096)]


def child(model_dir: str, checkpointing: bool) -> None:
    import torch

    from service.contracts.schema import Hyperparameters
    from service.shapes import Shape
    from service.training import backends
    from service.training.plan import estimate

    backends.tune_cuda()
    hp = Hyperparameters(max_seq_length=4096)
    model, tok = backends.load("unsloth", model_dir, hp, checkpointing=checkpointing)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    shape = Shape.from_config(json.loads((Path(model_dir) / "config.json").read_text()))
    vocab = model.config.vocab_size
    for rows, width in CASES:
        ids = torch.randint(0, vocab, (rows, width), device="cuda")
        batch = {"input_ids": ids, "labels": ids.clone(),
                 "attention_mask": torch.ones_like(ids)}
        for i in range(3):  # the first step allocates Adam's moments; peaks are read on the last
            if i == 2:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.item()
        torch.cuda.synchronize()
        plan = estimate(shape, hp, rows, "unsloth", row_tokens=width, checkpointing=checkpointing)
        print(json.dumps({"shape": Path(model_dir).name, "checkpointing": checkpointing, "rows": rows,
                          "width": width, "tokens": rows * width,
                          "peak_allocated": torch.cuda.max_memory_allocated(),
                          "peak_reserved": torch.cuda.max_memory_reserved(),
                          "plan": sum(plan.values()), "plan_parts": plan}), flush=True)
        del ids, batch, loss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer")
    ap.add_argument("--shapes", default="1b,3b,8b")
    ap.add_argument("--out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--checkpointing", choices=["on", "off"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.checkpointing == "on")
        return
    work = Path(tempfile.mkdtemp(prefix="act-mem-"))
    results = []
    for shape in args.shapes.split(","):
        model = work / shape
        subprocess.run([sys.executable, str(ROOT / "bench" / "make_llama.py"), str(model), "--shape", shape,
                        "--tokenizer", args.tokenizer], check=True, capture_output=True)
        for mode in ("off", "on"):
            out = subprocess.run([sys.executable, __file__, "--child", str(model), "--checkpointing", mode],
                                 capture_output=True, text=True,
                                 env={**os.environ, "UNSLOTH_BLOCK_COMPILE": "0"})  # as the service trains
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            for ln in lines:
                print(ln, flush=True)
                results.append(json.loads(ln))
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
        shutil.rmtree(model)
    gib = 1 << 30
    table = ["| shape | checkpointing | rows x width | plan GiB | peak reserved GiB | peak allocated GiB "
             "| plan / reserved |", "|---|---|---|---|---|---|---|"]
    for r in results:
        table.append(f"| {r['shape']} | {'on' if r['checkpointing'] else 'off'} | {r['rows']} x {r['width']} "
                     f"| {r['plan'] / gib:.2f} | {r['peak_reserved'] / gib:.2f} | {r['peak_allocated'] / gib:.2f} "
                     f"| {r['plan'] / r['peak_reserved']:.2f} |")
    print("\n".join(table))
    if args.out:
        Path(args.out).write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
