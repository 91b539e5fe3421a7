"""Where a QLoRA step's time goes on long-tailed lengths (issue 11): fixed cost per step vs per token.

    python bench/step_profile.py --model DIR --checkpointing unsloth|true|false [--profile]
        [--variants base,nocudnn,pad64,nocudnn+pad64]

Loads the model as the service does (Unsloth QLoRA r=16, all linear layers) with the given
gradient checkpointing, then times optimizer steps of batch 8 drawn from the long-tailed length
distribution of bench/mixed_lengths.py, length-grouped and padded (random order). Random token
ids: speed does not depend on them. Each step is synchronised and timed; a least-squares line
step_s = fixed + tokens / marginal_rate splits the fixed cost from the per-token one.
Variants: base (PyTorch's SDPA choice, cuDNN on H100/H200), nocudnn (cuDNN attention off, as the
service trains), pad64 (rows padded to a multiple of 64, so few distinct shapes).
--profile adds a torch.profiler trace of 3 steps: GPU-busy time vs wall, kernel launches, syncs.
Prints one JSON line per mode.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lengths(n: int, median: int = 460, cap: int = 2000, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [min(cap, max(16, int(rng.lognormvariate(math.log(median), 0.547)))) for _ in range(n)]


def batches(ls: list[int], batch: int, grouped: bool, seed: int = 0) -> list[list[int]]:
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    if grouped:
        order = get_length_grouped_indices(ls, batch, generator=torch.Generator().manual_seed(seed))
    else:
        order = list(range(len(ls)))
        random.Random(seed).shuffle(order)
    return [[ls[i] for i in order[k:k + batch]] for k in range(0, len(order) - batch + 1, batch)]


def make_batch(rows: list[int], vocab: int, pad: int, device: str, multiple: int = 1) -> dict:
    import torch

    n = -(-max(rows) // multiple) * multiple
    ids = torch.full((len(rows), n), pad)
    labels = torch.full((len(rows), n), -100)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, k in enumerate(rows):
        ids[i, :k] = torch.randint(0, vocab, (k,))
        labels[i, int(k * 0.6):k] = ids[i, int(k * 0.6):k]
        mask[i, :k] = 1
    return {k: v.to(device, non_blocking=True) for k, v in
            {"input_ids": ids, "labels": labels, "attention_mask": mask}.items()}


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--checkpointing", default="unsloth")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--variants", default="base",
                    help="comma list of base | nocudnn | pad64 | nocudnn+pad64 (SDPA backend, row width)")
    args = ap.parse_args()
    import torch
    from unsloth import FastLanguageModel

    gc = {"unsloth": "unsloth", "true": True, "false": False}[args.checkpointing]
    model, tok = FastLanguageModel.from_pretrained(args.model, max_seq_length=2048, load_in_4bit=True,
                                                   dtype=None, local_files_only=True)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0,
                                             target_modules=ALL_LINEAR, bias="none",
                                             use_gradient_checkpointing=gc, random_state=3407)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, fused=True)
    vocab, pad = model.config.vocab_size, tok.pad_token_id or 0
    ls = lengths(1200)

    multiple = 1

    def step(rows: list[int]) -> None:
        b = make_batch(rows, vocab, pad, "cuda", multiple)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the Trainer logs every step: one sync per step, as the service runs

    runs = [(v, mode, grouped) for v in args.variants.split(",")
            for mode, grouped in (("length_grouped", True), ("off", False))]
    for variant, mode, grouped in runs:
        torch.backends.cuda.enable_cudnn_sdp("nocudnn" not in variant)
        multiple = 64 if "pad64" in variant else 1
        bs = batches(ls, args.batch, grouped)
        for rows in bs[:5]:  # warm-up: compile, allocator growth
            step(rows)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        real, padded, times = [], [], []
        for rows in bs[5:5 + args.steps]:
            t = time.perf_counter()
            step(rows)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            real.append(sum(rows))
            padded.append(-(-max(rows) // multiple) * multiple * len(rows))
        fixed, per_token = fit_line([float(p) for p in padded], times)
        out = {"checkpointing": args.checkpointing, "variant": variant, "mode": mode, "steps": len(times),
               "real_tokens_per_s": sum(real) / sum(times), "mean_step_s": sum(times) / len(times),
               "mean_real_tokens": sum(real) / len(real), "mean_padded_tokens": sum(padded) / len(padded),
               "fit_fixed_s": fixed, "fit_marginal_tokens_per_s": 1 / per_token if per_token > 0 else None,
               "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
               "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30}
        print(json.dumps(out), flush=True)
        if args.profile and grouped and variant == runs[-1][0]:
            from torch.profiler import ProfilerActivity, profile

            rows_list = bs[5 + args.steps:8 + args.steps]
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                t = time.perf_counter()
                for rows in rows_list:
                    step(rows)
                torch.cuda.synchronize()
                wall = time.perf_counter() - t
            events = prof.key_averages()
            gpu_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CPU")
            kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
            busy = sum(e.device_time_total if hasattr(e, "device_time_total") else 0 for e in kernels)
            launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
            syncs = {e.key: (e.count, round(e.cpu_time_total / 1e3, 1)) for e in events
                     if "Synchronize" in e.key or "Memcpy" in e.key}
            print(json.dumps({"profile_wall_s": wall, "steps": len(rows_list),
                              "tokens": [sum(r) for r in rows_list], "gpu_self_s": gpu_us / 1e6,
                              "kernel_busy_s": busy / 1e6, "kernel_launches": launches,
                              "syncs_and_copies_ms": syncs}), flush=True)
            print(events.table(sort_by="self_cpu_time_total", row_limit=25), flush=True)
            print(events.table(sort_by="self_device_time_total", row_limit=25), flush=True)


if __name__ == "__main__":
    main()
