"""Several jobs on one GPU (issue 32, part 4, first figure): N batch-8 jobs submitted together to
a runner that trains them side by side (TUNEDOCK_RUNNER_JOBS_PER_GPU=N) against the same N jobs
on a runner that trains one at a time (=1), in one run, the two orders alternated.

    python bench/shared_gpu.py --model DIR [--jobs 4] [--rounds 2] [--steps 48] [--out results.md]

One API process and one GPU; each phase starts its own runner and sleeps until its warm child has
imported. Reported per phase: the aggregate real tokens/s (every job's trained tokens over the
time from the first job's start to the last one's end), each job's steady tokens/s (median
after 3 warm-up steps), the GPU's busy fraction (nvidia-smi utilization.gpu sampled every 0.5 s
over the same span), each job's peak memory against its plan, OOMs (target: none), and the
ratio side by side / one at a time (target >= 2.5x).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner_overhead import job_events, wait_http  # noqa: E402
from synthetic import text_rows, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 3


class Busy(threading.Thread):
    """Samples the GPU's utilization until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", "0"], capture_output=True, text=True).stdout.strip()
            if out.isdigit():
                self.samples.append((time.time(), int(out)))
            self.done.wait(0.5)

    def between(self, start: float, end: float) -> float:
        inside = [u for t, u in self.samples if start <= t <= end]
        return statistics.mean(inside) / 100 if inside else float("nan")


def summary(c: httpx.Client, job_id: str) -> dict:
    job = c.get(f"/jobs/{job_id}").json()
    events = job_events(c, job_id)
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    rates = [m["tokens_per_second"] for m in metrics if m["tokens_per_second"]]
    placed = [e["data"] for e in events if e["type"] == "placement"]
    running = [e for e in events if e["type"] == "status" and e["data"]["status"] == "running"]
    return {"id": job_id, "status": job["status"], "error": job.get("error"),
            "tokens": job["trained_tokens"] or 0,
            "tokens_per_s": statistics.median(rates[WARMUP:]) if len(rates) > WARMUP else float("nan"),
            "peak": max((m["gpu_memory_bytes"] or 0 for m in metrics), default=0),
            "plan": (job["plan"] or {}).get("estimated_peak_bytes") or 0,
            "micro_batch": (job["plan"] or {}).get("micro_batch_size"),
            "checkpointing": (job["plan"] or {}).get("gradient_checkpointing"),
            "ooms": sum(1 for e in events if e["type"] == "oom_retry"),
            "neighbours": max((len(p["neighbours"]) for p in placed), default=0),
            # (event time, trained tokens so far) at every step: when the job trained what
            "trace": [(e["created_at"], e["data"]["trained_tokens"]) for e in events
                      if e["type"] == "metrics" and e["data"].get("trained_tokens")],
            "started": running[0]["created_at"], "finished": job["finished_at"]}


def together(jobs: list[dict]) -> tuple[float, int]:
    """(tokens/s of all the jobs together, seconds) over the window in which every one of them was
    training (from the last one's first step to the first one's last step): the steady-state
    aggregate with no start or finish in it. (nan, 0) when they never all trained at once.
    Event times have 1 s resolution, so a window of a few seconds says little."""
    start = max(j["trace"][0][0] for j in jobs)
    end = min(j["trace"][-1][0] for j in jobs)
    if end - start < 2:
        return float("nan"), 0

    def at(trace: list[tuple[int, int]], t: int) -> int:
        return max((tokens for when, tokens in trace if when <= t), default=0)

    return sum(at(j["trace"], end) - at(j["trace"], start) for j in jobs) / (end - start), end - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--settle", type=float, default=30)
    ap.add_argument("--out")
    args = ap.parse_args()
    import torch

    work = Path(tempfile.mkdtemp(prefix="tunedock-shared-"))
    data = str(work / "rows.jsonl")
    write_jsonl(data, text_rows(8 * args.steps, 1400))  # rows of 1024 tokens after truncation
    env = {**os.environ, "TUNEDOCK_DATABASE_URL": f"sqlite+aiosqlite:///{work}/bench.db",
           "TUNEDOCK_DATA_DIR": str(work / "data"), "TUNEDOCK_BASE_MODELS": f"bench={args.model}",
           "TUNEDOCK_LOG_LEVEL": "warning", "TUNEDOCK_POLL_SECONDS": "0.2", "TUNEDOCK_RUNNER_GPUS": "0"}
    key = subprocess.run([sys.executable, "-m", "service", "keys", "create", "--tenant", "bench"], env=env,
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    api = subprocess.Popen([sys.executable, "-m", "service", "api", "--port", "8312"], env=env, cwd=ROOT,
                           stdout=open(work / "api.log", "w"), stderr=subprocess.STDOUT)
    busy = Busy()
    busy.start()
    phases: list[tuple[str, dict]] = []
    try:
        wait_http("http://127.0.0.1:8312/healthz")
        c = httpx.Client(base_url="http://127.0.0.1:8312", headers={"Authorization": f"Bearer {key}"},
                         timeout=60)
        with open(data, "rb") as f:
            file_id = c.post("/files", files={"file": ("bench.jsonl", f)}).json()["id"]
        body = {"base_model": "bench", "training_file": file_id, "deploy": False,
                "hyperparameters": {"n_epochs": 1, "batch_size": 8, "max_seq_length": 1024,
                                    "lora_r": 16, "lora_alpha": 16}}

        def phase(per_gpu: int) -> dict:
            log = open(work / f"runner-{len(phases)}.log", "w")
            runner = subprocess.Popen([sys.executable, "-m", "service", "runner"], cwd=ROOT,
                                      env={**env, "TUNEDOCK_RUNNER_JOBS_PER_GPU": str(per_gpu)},
                                      stdout=log, stderr=subprocess.STDOUT)
            try:
                time.sleep(args.settle)  # the warm child finishes importing
                ids = [c.post("/jobs", json=body).json()["id"] for _ in range(args.jobs)]
                while any(c.get(f"/jobs/{i}").json()["status"] not in ("succeeded", "failed", "cancelled")
                          for i in ids):
                    time.sleep(1)
            finally:
                runner.terminate()
                runner.wait(60)
            jobs = [summary(c, i) for i in ids]
            start, end = min(j["started"] for j in jobs), max(j["finished"] or 0 for j in jobs)
            return {"per_gpu": per_gpu, "jobs": jobs, "seconds": end - start,
                    "aggregate": sum(j["tokens"] for j in jobs) / max(end - start, 1),
                    "busy": busy.between(start, end)}

        order = [args.jobs, 1] * args.rounds
        for i, per_gpu in enumerate(order if args.rounds % 2 == 0 else order[::-1]):
            name = "side by side" if per_gpu > 1 else "one at a time"
            phases.append((name, phase(per_gpu)))
            p = phases[-1][1]
            print(f"{name}: {p['aggregate']:,.0f} tokens/s over {p['seconds']} s, busy {p['busy']:.0%}; jobs: "
                  + "; ".join(f"{j['status']} {j['tokens_per_s']:,.0f} tok/s, peak {j['peak'] / 2**30:.1f} "
                              f"plan {j['plan'] / 2**30:.1f} GiB, mb {j['micro_batch']} ckpt {j['checkpointing']}, "
                              f"{j['neighbours']} neighbours, {j['started']}-{j['finished']}"
                              for j in p["jobs"]), flush=True)
    finally:
        busy.done.set()
        api.terminate()
        api.wait(60)
    by = {"side by side": [p for n, p in phases if n == "side by side"],
          "one at a time": [p for n, p in phases if n == "one at a time"]}
    ratios = [a["aggregate"] / b["aggregate"] for a, b in zip(by["side by side"], by["one at a time"])]
    lines = [f"### {args.jobs} batch-8 jobs on one GPU: side by side vs one at a time — {dt.date.today()}",
             f"Machine: {torch.cuda.get_device_name(0)}, torch {torch.__version__}; command: "
             f"`python bench/shared_gpu.py --model <1B Llama> --jobs {args.jobs} --rounds {args.rounds} "
             f"--steps {args.steps}`", "",
             "| round | runner | aggregate tokens/s | span s | GPU busy | per-job tokens/s | peak / plan GiB | "
             "micro-batch, ckpt | OOMs | failed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, (name, p) in enumerate(phases):
        jobs = p["jobs"]
        lines.append(
            f"| {i + 1} | {name} | {p['aggregate']:,.0f} | {p['seconds']} | {p['busy']:.0%} | "
            + ", ".join(f"{j['tokens_per_s']:,.0f}" for j in jobs) + " | "
            + ", ".join(f"{j['peak'] / 2**30:.1f}/{j['plan'] / 2**30:.1f}" for j in jobs) + " | "
            + ", ".join(f"{j['micro_batch']}{'c' if j['checkpointing'] else ''}" for j in jobs) + " | "
            + f"{sum(j['ooms'] for j in jobs)} | {sum(j['status'] != 'succeeded' for j in jobs)} |")
    # Steady state, without the starts: every side-by-side job training at once (the window in
    # which all of them did), over one job's steady rate alone (the mean of the one-at-a-time
    # jobs'). Summing each job's own median rate instead counted a job that trained mostly
    # alone, while its neighbours were still loading, at its solo rate (session 18's run).
    steady = []
    for a, b in zip(by["side by side"], by["one at a time"]):
        rate, seconds = together(a["jobs"])
        steady.append(f"{rate:,.0f} tokens/s over {seconds} s = "
                      f"{rate / statistics.mean(j['tokens_per_s'] for j in b['jobs']):.2f}x one job alone")
    lines += ["", "Aggregate ratio, side by side / one at a time, per round: "
              + ", ".join(f"{r:.2f}x" for r in ratios) + " (target >= 2.5x).",
              f"Steady state, all {args.jobs} training at once, per round: " + "; ".join(steady) + ".", ""]
    for name, p in phases:
        for j in p["jobs"]:
            if j["status"] != "succeeded":
                lines.append(f"- {name}: {j['id']} {j['status']}: {j['error']}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
