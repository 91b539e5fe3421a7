"""Each export format's own work (service/exports/build.py, gguf.py) on one base model
and a random r=16 adapter on every linear layer (size and time do not depend on the values):
merge + save + check, then the tar (merged_16bit) or the GGUF conversion, quantization and checks.

    python bench/exports.py --base MODEL_DIR [--formats merged_16bit,gguf_f16,gguf_q8_0,gguf_q4_k_m]
    python bench/exports.py --shape 1b --tokenizer TOKENIZER_DIR --formats merged_16bit   # GPU

Prints one row per format: size, seconds, peak GPU memory, the checks. `--out` appends them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FORMATS = ("merged_16bit", "gguf_f16", "gguf_q8_0", "gguf_q4_k_m")


def random_adapter(base: Path, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from service.contracts.schema import ALL_LINEAR

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules=list(ALL_LINEAR)))
    torch.manual_seed(0)
    for name, w in peft.named_parameters():
        if "lora_B" in name:
            w.data.normal_(0, 0.01)
    peft.save_pretrained(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", help="a model folder (else --shape builds a random one)")
    ap.add_argument("--shape", default="1b")
    ap.add_argument("--tokenizer")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--work")
    ap.add_argument("--out")
    args = ap.parse_args()
    import msgspec
    import torch

    from service.contracts.messages import Emitter
    from service.contracts.schema import ExportFormat
    from service.exports import gguf
    from service.exports.build import CHECK_PROMPTS, merge_16bit

    work = Path(args.work or tempfile.mkdtemp())
    base = Path(args.base) if args.base else work / "base"
    if not args.base:
        subprocess.run([sys.executable, str(ROOT / "bench" / "make_llama.py"), str(base), "--shape",
                        args.shape, "--tokenizer", args.tokenizer], check=True)
    label = args.shape + " Llama" if not args.base else base.name
    random_adapter(base, work / "adapter")
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    prompts = list(CHECK_PROMPTS) * (2 if cuda else 1)
    rows = []
    for fmt in (ExportFormat(f) for f in args.formats.split(",")):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        merged = work / f"merged-{fmt.value}"
        began = time.monotonic()
        checks = merge_16bit(str(base), work / "adapter", merged, prompts)
        merge_s = time.monotonic() - began
        if fmt is ExportFormat.merged_16bit:
            out = work / "merged.tar"
            with tarfile.open(out, "w") as tar:
                tar.add(merged, arcname="merged")
        else:
            out = work / f"{fmt.value}.gguf"
            more, _ = gguf.export(merged, fmt, out, "bench", Emitter(open("/dev/null", "w")))
            checks = msgspec.convert({**msgspec.to_builtins(checks), **msgspec.to_builtins(more)},
                                     type(checks))
        total = time.monotonic() - began
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "-"
        rows.append(f"| {label} ({device}) | {fmt.value} | {out.stat().st_size / 1e6:,.0f} MB | "
                    f"{total:.1f} s ({merge_s:.1f} s merge, save and check) | {peak} | "
                    f"{json.dumps(msgspec.to_builtins(checks))} |")
        print(rows[-1], flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
