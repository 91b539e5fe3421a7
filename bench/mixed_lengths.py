"""Training on long-tailed lengths: packing modes through POST /jobs vs a bare packed run (issue 11).

    python bench/mixed_lengths.py --model DIR [--out results.md]          # GPU: 1B shape, Unsloth
    python bench/mixed_lengths.py --cpu [--out results.md]                # CPU: the test model, PEFT

A generated chat set with lengths like real ones (log-normal: median ~460 tokens, p95 ~1,130,
capped at 2,000; on the CPU a quarter of that) is trained for one epoch, QLoRA r=16 on all linear
layers (fp32 LoRA on the CPU), batch 8, by one API + runner, once per packing mode after one
unmeasured warm-up job; then by
bench/bare_train.py with TRL's `SFTTrainer(packing=True)` (best-fit packing, padding-free) on the
same rows. Reported per run: real tokens/s (padding excluded; real tokens over the step time after
10 warm-up steps), padding, peak memory, and for the service runs the memory plan's estimate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner_overhead import finished_job, job_events, wait_http  # noqa: E402
from synthetic import WORDS, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 10
GiB = 2**30
TOKENS_PER_WORD = 1.58  # SmolLM2's tokenizer on WORDS (the GPU model uses the same tokenizer)


def long_tailed_rows(n: int, median: int, cap: int, seed: int = 0) -> list[dict]:
    """Chats whose token lengths are log-normal (p95 = 2.46 x median), 60% question, 40% answer."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens = min(cap, max(16, int(rng.lognormvariate(math.log(median), 0.547))))
        words = max(4, int(tokens / TOKENS_PER_WORD))
        q, a = int(words * 0.6), words - int(words * 0.6)
        rows.append({"messages": [
            {"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(q))},
            {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(a))}]})
    return rows


def steady_rate(metrics: list[dict]) -> float:
    """Real tokens over step time after the warm-up (a mean rate: steps differ in size)."""
    after = metrics[WARMUP:]
    tokens = after[-1]["trained_tokens"] - metrics[WARMUP - 1]["trained_tokens"]
    return tokens / sum(m["step_seconds"] for m in after)


def service_runs(model: str, data: Path, validation: Path, work: Path, modes: list[str],
                 hp: dict) -> dict[str, dict]:
    env = {**os.environ, "TUNEDOCK_DATABASE_URL": f"sqlite+aiosqlite:///{work}/bench.db",
           "TUNEDOCK_DATA_DIR": str(work / "data"), "TUNEDOCK_BASE_MODELS": f"bench={model}",
           "TUNEDOCK_LOG_LEVEL": "warning", "TUNEDOCK_POLL_SECONDS": "0.2"}
    key = subprocess.run([sys.executable, "-m", "service", "keys", "create", "--tenant", "bench"],
                         env=env, cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    api = subprocess.Popen([sys.executable, "-m", "service", "api", "--port", "8198"], env=env,
                           cwd=ROOT, stdout=open(work / "api.log", "w"), stderr=subprocess.STDOUT)
    runner = subprocess.Popen([sys.executable, "-m", "service", "runner"], env=env, cwd=ROOT,
                              stdout=open(work / "runner.log", "w"), stderr=subprocess.STDOUT)
    out = {}
    try:
        wait_http("http://127.0.0.1:8198/healthz")
        c = httpx.Client(base_url="http://127.0.0.1:8198", timeout=60,
                         headers={"Authorization": f"Bearer {key}"})
        with data.open("rb") as f:
            file_id = c.post("/files", files={"file": ("train.jsonl", f)}).json()["id"]
        with validation.open("rb") as f:
            val_id = c.post("/files", files={"file": ("val.jsonl", f)}).json()["id"]
        # An unmeasured job first: the first training process on a machine pays torch.compile
        # (Unsloth's kernels) and cold caches, which would count against whichever mode ran first.
        warm = work / "warm.jsonl"
        warm.write_text("".join(data.read_text().splitlines(keepends=True)[:160]))
        with warm.open("rb") as f:
            warm_id = c.post("/files", files={"file": ("warm.jsonl", f)}).json()["id"]
        for mode, training_file in (("warm-up", warm_id), *((m, file_id) for m in modes)):
            # "MODE@N": that packing mode with batch_size N (e.g. the bare run's examples per step);
            # "MODE:on" / "MODE:off": with gradient_checkpointing on / off (default auto)
            packing, _, batch = mode.partition("@")
            packing, _, checkpointing = packing.partition(":")
            job = c.post("/jobs", json={"base_model": "bench", "training_file": training_file,
                                        "validation_file": val_id, "deploy": False,
                                        "hyperparameters": {
                                            **hp, "packing": "off" if mode == "warm-up" else packing,
                                            **({"batch_size": int(batch)} if batch else {}),
                                            **({"gradient_checkpointing": checkpointing}
                                               if checkpointing else {})}}).json()
            job = finished_job(c, job["id"], work, mode)
            if mode == "warm-up":
                continue
            metrics = [e["data"] for e in job_events(c, job["id"]) if e["type"] == "metrics"]
            out[mode] = {"real_tokens_per_s": steady_rate(metrics), "steps": len(metrics),
                         "trained_tokens": job["trained_tokens"],
                         "peak_bytes": max(m["gpu_memory_bytes"] or 0 for m in metrics),
                         "plan": job["plan"], "dataset": job["dataset"],
                         "samples": [c.get("samples") for c in
                                     c.get(f"/jobs/{job['id']}/checkpoints").json()["data"]]}
            print(json.dumps({mode: {k: v for k, v in out[mode].items() if k != "dataset"}}), flush=True)
    finally:
        for p in (runner, api):
            p.terminate()
            p.wait(60)
    return out


def bare_packed(model: str, data: Path, backend: str, seq: int, batch: int,
                checkpointing: bool = True) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bare_train.py"), "--model", model,
                          "--data", str(data), "--backend", backend, "--packing", "--epochs", "1",
                          "--seq", str(seq), "--batch", str(batch), "--warmup-steps", str(WARMUP),
                          *([] if checkpointing else ["--no-checkpointing"])],
                         capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "UNSLOTH_BLOCK_COMPILE": "0"})
    if out.returncode != 0:
        print(out.stdout[-3000:], out.stderr[-6000:])
        raise RuntimeError("bare packed run failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="model folder (default on --cpu: the test model)")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--modes", default="auto,off,padding_free")
    ap.add_argument("--skip-bare", action="store_true", help="service runs only")
    ap.add_argument("--bare-without-checkpointing", action="store_true",
                    help="also run the bare packed script with Unsloth's checkpointing off (GPU)")
    ap.add_argument("--batch", type=int, default=8, help="the service jobs' batch_size")
    ap.add_argument("--rows", type=int, help="training rows (default 1200; CPU 240)")
    ap.add_argument("--hp", default="{}", help="extra hyperparameters (JSON) for the service jobs")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.cpu:
        sys.path.insert(0, str(ROOT))
        from tests.support import test_model

        model = args.model or str(test_model.build())
        n_rows, median, cap, seq, backend = 240, 115, 500, 512, "peft"
    else:
        model, n_rows, median, cap, seq, backend = args.model, 1200, 460, 2000, 2048, "unsloth"
    n_rows = args.rows or n_rows
    work = Path(tempfile.mkdtemp(prefix="tunedock-mixed-"))
    data, validation = work / "train.jsonl", work / "val.jsonl"
    write_jsonl(str(data), long_tailed_rows(n_rows, median, cap))
    write_jsonl(str(validation), long_tailed_rows(16, median, cap, seed=1))
    hp = {**json.loads(args.hp), "n_epochs": 1, "batch_size": args.batch, "max_seq_length": seq, "lora_r": 16, "lora_alpha": 16}
    modes = args.modes.split(",")
    runs = service_runs(model, data, validation, work, modes, hp)
    if args.skip_bare:
        return
    bare = bare_packed(model, data, backend, seq, 8)
    # The same script without checkpointing, the stronger comparison on a GPU with room for it.
    bare_nockpt = bare_packed(model, data, backend, seq, 8, checkpointing=False) \
        if args.bare_without_checkpointing else None

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    lengths = runs[modes[0]]["dataset"]["lengths"]
    real = runs[modes[0]]["trained_tokens"]
    lines = [
        f"### Mixed lengths: packing through POST /jobs vs bare TRL packing — {dt.date.today()}",
        f"Machine: {device}, torch {torch.__version__}, Python {platform.python_version()}; "
        f"backend {backend}",
        f"Command: `python bench/mixed_lengths.py {'--cpu' if args.cpu else '--model <1B Llama, random weights>'}`",
        f"Data: {n_rows} generated chats, tokens per example mean {lengths['mean']:.0f}, "
        f"p50 {lengths['p50']}, p95 {lengths['p95']}, max {lengths['max']}; {real:,} real tokens; "
        f"one epoch, batch 8, max_seq_length {seq}, LoRA r=16 all linear",
        "",
        "| run | steps | real tokens/s | peak GiB | plan GiB (micro-batch, tokens/row) | checkpointing "
        "| plan / peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, r in runs.items():
        plan, peak = r["plan"], r["peak_bytes"]
        resolved = f" ({plan['packing']})" if mode.startswith("auto") else ""
        ratio = f"{plan['estimated_peak_bytes'] / peak:.2f}" if peak else "n/a (CPU)"
        lines.append(f"| service, packing {mode.replace('@', ', batch ')}{resolved} | {r['steps']} | {r['real_tokens_per_s']:,.0f} | "
                     f"{peak / GiB:.2f} | {plan['estimated_peak_bytes'] / GiB:.2f} "
                     f"({plan['micro_batch_size']}, {plan['row_tokens']}) "
                     f"| {'on' if plan.get('gradient_checkpointing', True) else 'off'} | {ratio} |")
    lines.append(f"| bare {backend} + TRL SFTTrainer(packing=True) | {bare['steps']} | "
                 f"{bare['steady_real_tokens_per_s']:,.0f} | {bare['peak_reserved_bytes'] / GiB:.2f} | "
                 f"| {'on (Unsloth offloaded)' if backend == 'unsloth' else 'off'} | |")
    if bare_nockpt:
        lines.append(f"| bare {backend} + TRL SFTTrainer(packing=True) | {bare_nockpt['steps']} | "
                     f"{bare_nockpt['steady_real_tokens_per_s']:,.0f} | "
                     f"{bare_nockpt['peak_reserved_bytes'] / GiB:.2f} | | off | |")
    auto, off = runs.get("auto"), runs.get("off")
    lines.append("")
    if auto and off:
        lines.append(f"- packing auto / off: **{auto['real_tokens_per_s'] / off['real_tokens_per_s']:.2f}x** "
                     "real tokens/s (target >= 1.5 on the GPU)")
    if auto:
        lines.append(f"- packing auto / bare packed: **{auto['real_tokens_per_s'] / bare['steady_real_tokens_per_s']:.2f}x** "
                     "(target >= 1.0 on the GPU)")
    if auto and bare_nockpt:
        lines.append(f"- packing auto / bare packed without checkpointing: "
                     f"**{auto['real_tokens_per_s'] / bare_nockpt['steady_real_tokens_per_s']:.2f}x**")
    for mode, r in runs.items():
        if r["trained_tokens"] != real:
            lines.append(f"- WARNING: {mode} counted {r['trained_tokens']} tokens, not {real}")
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps({"service": runs, "bare": bare, "bare_without_checkpointing": bare_nockpt},
                     default=str))
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
