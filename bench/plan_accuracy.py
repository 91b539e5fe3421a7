"""Memory plan accuracy (GPU): the plan's estimate vs the measured peak for three shapes.

    python bench/plan_accuracy.py --tokenizer DIR [--out results.md]
Builds each random-weight Llama (bench/make_llama.py), trains a few Unsloth QLoRA steps with
bench/bare_train.py, and compares torch's peak reserved memory with service.training.plan.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import text_rows, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from service.contracts.schema import Hyperparameters  # noqa: E402
from service.shapes import Shape  # noqa: E402
from service.training.plan import GiB, estimate  # noqa: E402

CASES = [("1b", 1024, 8), ("1b", 4096, 2), ("3b", 2048, 4)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="plan-acc-"))
    data = work / "rows.jsonl"
    write_jsonl(str(data), text_rows(64, 5000))
    rows = ["| shape | seq | micro-batch | plan GiB | measured peak reserved GiB | plan / measured |",
            "|---|---|---|---|---|---|"]
    built: set[str] = set()
    for shape, seq, mb in CASES:
        model = work / shape
        if shape not in built:
            subprocess.run([sys.executable, str(ROOT / "bench" / "make_llama.py"), str(model),
                            "--shape", shape, "--tokenizer", args.tokenizer], check=True,
                           capture_output=True)
            built.add(shape)
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "bare_train.py"), "--model", str(model),
                              "--data", str(data), "--seq", str(seq), "--batch", str(mb),
                              "--max-steps", "6", "--warmup-steps", "2"], capture_output=True, text=True,
                             # as the service trains (service/training/child.py)
                             env={**os.environ, "UNSLOTH_BLOCK_COMPILE": "0"})
        if out.returncode:
            print(out.stderr[-4000:])
            raise RuntimeError(f"{shape} seq {seq} failed")
        measured = json.loads(out.stdout.strip().splitlines()[-1])["peak_reserved_bytes"]
        cfg = json.loads((model / "config.json").read_text())
        plan = sum(estimate(Shape.from_config(cfg), Hyperparameters(max_seq_length=seq), mb,
                            "unsloth").values())
        rows.append(f"| {shape} | {seq} | {mb} | {plan / GiB:.2f} | {measured / GiB:.2f} | "
                    f"{plan / measured:.2f} |")
        print(rows[-1], flush=True)
    text = "\n".join(["### Memory plan accuracy (Unsloth QLoRA r=16 all linear, 6 steps)",
                      "Command: `python bench/plan_accuracy.py --tokenizer <dir>`; target within +-20%",
                      "", *rows, ""])
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
