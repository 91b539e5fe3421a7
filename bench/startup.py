"""Submit -> first training step, with and without the runner's warm child (GPU; issue 6, part 1).

    python bench/startup.py --model DIR [--out results.md]

Two runners one after the other in one run, each with its own API and database, and three short
QLoRA jobs (r=16 all linear, batch 8 x 1024, 8 steps), each submitted to an idle runner (`--settle`
seconds after start or after the previous job, time for the warm child to import):
  - warm child on (the default): jobs 1 and 2
  - warm child off (TUNEDOCK_WARM_CHILD=false): job 3, the start-up before this change
Job 1 is the first on a fresh machine (Triton/Unsloth compile caches empty); job 2 runs with
them filled. Target: submit -> first step <= model load + 10 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner_overhead import job_events, job_timeline, wait_http  # noqa: E402
from synthetic import text_rows, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HYPERPARAMETERS = {"n_epochs": 1, "batch_size": 8, "lora_r": 16, "lora_alpha": 16}


def run_jobs(model: str, data: str, work: Path, warm: bool, n_jobs: int, settle: float,
             port: int, seq: int) -> list[dict]:
    env = {**os.environ, "TUNEDOCK_DATABASE_URL": f"sqlite+aiosqlite:///{work}/bench.db",
           "TUNEDOCK_DATA_DIR": str(work / "data"), "TUNEDOCK_BASE_MODELS": f"bench={model}",
           "TUNEDOCK_LOG_LEVEL": "info", "TUNEDOCK_POLL_SECONDS": "0.2",
           "TUNEDOCK_WARM_CHILD": "true" if warm else "false"}
    work.mkdir(parents=True, exist_ok=True)
    key = subprocess.run([sys.executable, "-m", "service", "keys", "create", "--tenant", "bench"],
                         env=env, cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    api = subprocess.Popen([sys.executable, "-m", "service", "api", "--port", str(port)], env=env,
                           cwd=ROOT, stdout=open(work / "api.log", "w"), stderr=subprocess.STDOUT)
    runner = subprocess.Popen([sys.executable, "-m", "service", "runner"], env=env, cwd=ROOT,
                              stdout=open(work / "runner.log", "w"), stderr=subprocess.STDOUT)
    results = []
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}",
                         headers={"Authorization": f"Bearer {key}"}, timeout=60)
        with open(data, "rb") as f:
            file_id = c.post("/files", files={"file": ("bench.jsonl", f)}).json()["id"]
        for _ in range(n_jobs):
            time.sleep(settle)  # each job arrives at an idle runner whose warm child has imported
            submitted = time.time()
            job = c.post("/jobs", json={"base_model": "bench", "training_file": file_id,
                                        "deploy": False, "hyperparameters": {**HYPERPARAMETERS, "max_seq_length": seq}}).json()
            while (job := c.get(f"/jobs/{job['id']}").json())["status"] not in (
                    "succeeded", "failed", "cancelled"):
                time.sleep(0.5)
            if job["status"] != "succeeded":
                print((work / "runner.log").read_text()[-5000:])
                for log in (work / "data" / "runs").rglob("*.log"):
                    print(log, log.read_text()[-5000:])
                raise RuntimeError(f"job ended {job['status']}: {job.get('error')}")
            events = job_events(c, job["id"])
            loaded = next(e for e in events if e["type"] == "loaded")["data"]["seconds"]
            results.append({"warm": warm, "load_s": loaded, "timeline": job_timeline(events, submitted)})
            print(json.dumps(results[-1]), flush=True)
    finally:
        for p in (runner, api):
            p.terminate()
            p.wait(60)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--settle", type=float, default=60)
    ap.add_argument("--max-seq-length", type=int, default=1024, help="smaller for a CPU smoke run")
    ap.add_argument("--out")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tunedock-startup-"))
    data = str(work / "rows.jsonl")
    write_jsonl(data, text_rows(64, 1400))  # 8 steps of 8 x 1024 tokens
    seq = args.max_seq_length
    rows = run_jobs(args.model, data, work / "warm", True, 2, args.settle, 8201, seq)
    rows += run_jobs(args.model, data, work / "cold", False, 1, 2, 8202, seq)
    import torch

    lines = [f"### Submit -> first training step — {dt.date.today()}",
             f"Machine: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}, "
             f"torch {torch.__version__}; model: `{Path(args.model).name}`",
             "Command: `python bench/startup.py --model <1B Llama, random weights>` (jobs submitted "
             f"{args.settle:.0f} s after the runner started or the previous job ended; event times "
             "have 1 s resolution)", "",
             "| job | warm child | model load s | submit -> running | -> child imported | -> loaded "
             "| -> training loop | -> first step | first step - load | target (<= load + 10 s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        t = r["timeline"]
        margin = t["first_step"] - r["load_s"]
        lines.append(f"| {i} | {'on' if r['warm'] else 'off'} | {r['load_s']:.1f} | {t['running']:.0f} | "
                     f"{t['child_imported']:.0f} | {t['model_loaded']:.0f} | {t['train_begin']:.0f} | "
                     f"{t['first_step']:.0f} | {margin:.0f} | {'met' if margin <= 10 else 'NOT met'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
