"""One job per GPU at once (issue 15, part 1): per-job throughput and peak memory with every GPU
busy, against one job alone, in one run.

    python bench/multi_gpu.py --model DIR [--gpus 0,1] [--jobs 4] [--out results.md]

One runner with TUNEDOCK_RUNNER_GPUS=<gpus> (default: every GPU torch sees). First one job alone,
then `--jobs` jobs submitted together (QLoRA r=16, 1B shape, batch 8 x 1024, 24 steps each).
Reported per job: the GPU slot that ran it, steady tokens/s (median after 3 warm-up steps), peak
reserved memory against the plan's estimate, and the ratio to the lone job (target >= 0.95x).
On a one-GPU machine the jobs run one after another: the ratio then checks that queued jobs train
as fast as a lone one, and each plan against its own device.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner_overhead import job_events, wait_http  # noqa: E402
from synthetic import text_rows, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 3
HP = {"n_epochs": 1, "batch_size": 8, "max_seq_length": 1024, "lora_r": 16, "lora_alpha": 16}


def summary(c: httpx.Client, job_id: str) -> dict:
    job = c.get(f"/jobs/{job_id}").json()
    if job["status"] != "succeeded":
        raise RuntimeError(f"{job_id} ended {job['status']}: {job.get('error')}")
    events = job_events(c, job_id)
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    rates = [m["tokens_per_second"] for m in metrics if m["tokens_per_second"]]
    running = [e for e in events if e["type"] == "status" and e["data"]["status"] == "running"]
    return {"id": job_id, "slot": running[-1]["data"]["runner"].rsplit("/", 1)[-1],
            "tokens_per_s": statistics.median(rates[WARMUP:]),
            "peak": max(m["gpu_memory_bytes"] or 0 for m in metrics),
            "plan": job["plan"]["estimated_peak_bytes"], "available": job["plan"]["available_bytes"],
            "started": running[-1]["created_at"], "finished": job["finished_at"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--gpus")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--out")
    args = ap.parse_args()
    import torch

    gpus = args.gpus or ",".join(str(i) for i in range(torch.cuda.device_count()))
    work = Path(tempfile.mkdtemp(prefix="tunedock-multigpu-"))
    data = str(work / "rows.jsonl")
    write_jsonl(data, text_rows(192, 1400))  # 24 steps of 8 x 1024 tokens
    env = {**os.environ, "TUNEDOCK_DATABASE_URL": f"sqlite+aiosqlite:///{work}/bench.db",
           "TUNEDOCK_DATA_DIR": str(work / "data"), "TUNEDOCK_BASE_MODELS": f"bench={args.model}",
           "TUNEDOCK_LOG_LEVEL": "warning", "TUNEDOCK_POLL_SECONDS": "0.2", "TUNEDOCK_RUNNER_GPUS": gpus}
    key = subprocess.run([sys.executable, "-m", "service", "keys", "create", "--tenant", "bench"], env=env,
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    api = subprocess.Popen([sys.executable, "-m", "service", "api", "--port", "8311"], env=env, cwd=ROOT,
                           stdout=open(work / "api.log", "w"), stderr=subprocess.STDOUT)
    runner = subprocess.Popen([sys.executable, "-m", "service", "runner"], env=env, cwd=ROOT,
                              stdout=open(work / "runner.log", "w"), stderr=subprocess.STDOUT)
    try:
        wait_http("http://127.0.0.1:8311/healthz")
        c = httpx.Client(base_url="http://127.0.0.1:8311", headers={"Authorization": f"Bearer {key}"},
                         timeout=60)
        with open(data, "rb") as f:
            file_id = c.post("/files", files={"file": ("bench.jsonl", f)}).json()["id"]
        body = {"base_model": "bench", "training_file": file_id, "deploy": False, "hyperparameters": HP}

        def run(n: int) -> list[dict]:
            ids = [c.post("/jobs", json=body).json()["id"] for _ in range(n)]
            while any(c.get(f"/jobs/{i}").json()["status"] not in ("succeeded", "failed", "cancelled")
                      for i in ids):
                time.sleep(1)
            return [summary(c, i) for i in ids]

        time.sleep(30)  # the warm children finish importing
        [alone] = run(1)
        together = run(args.jobs)
    finally:
        for p in (runner, api):
            p.terminate()
            p.wait(60)
    overlap = sum(1 for a in together for b in together
                  if a["id"] < b["id"] and a["started"] < b["finished"] and b["started"] < a["finished"])
    lines = [f"### One job per GPU — {dt.date.today()}",
             f"Machine: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}; "
             f"TUNEDOCK_RUNNER_GPUS={gpus}; command: `python bench/multi_gpu.py --model <1B Llama> --jobs {args.jobs}`",
             "", "| job | slot | tokens/s | vs alone | peak GiB | plan GiB | free at plan GiB |", "|---|---|---|---|---|---|---|"]
    for name, r in [("alone", alone)] + [(f"{i + 1} of {args.jobs}", r) for i, r in enumerate(together)]:
        lines.append(f"| {name} | {r['slot']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / alone['tokens_per_s']:.3f}x | "
                     f"{r['peak'] / 2**30:.2f} | {r['plan'] / 2**30:.2f} | {(r['available'] or 0) / 2**30:.1f} |")
    lines += ["", f"Pairs of jobs that trained at the same time: {overlap}.", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
