"""Out-of-memory recovery when the pressure stays (GPU; issue 17, part 8).

    python bench/oom_pressure.py --model DIR [--out results.md]

One runner, one QLoRA job (batch 16 x 2048 on a 1B shape). Once the child has made its memory
plan (against an idle GPU, so a large micro-batch), a second process takes most of the GPU's
free memory and keeps it until the job ends, leaving room for a small micro-batch only. The first
attempt runs out of memory; each retry plans against the memory free at that moment and takes
the largest micro-batch under its cap that fits. Reported: the micro-batch of each attempt, the
allocator's message as the job's event carries it, and the seconds from the OOM to the next step.
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
from runner_overhead import job_events, wait_http  # noqa: E402
from synthetic import text_rows, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HOG = """
import sys, torch
torch.cuda.init(); torch.empty(1, device="cuda")
print("ready", flush=True)
leave = int(sys.stdin.readline())
free, _ = torch.cuda.mem_get_info()
held = torch.empty(max(0, free - leave), dtype=torch.uint8, device="cuda")
print(f"holding {held.numel() / 2**30:.2f} GiB, leaving {leave / 2**30:.2f} GiB", flush=True)
sys.stdin.readline()  # until the job ends
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--leave-mb", type=int, default=4, help="leave room for this micro-batch")
    ap.add_argument("--out")
    args = ap.parse_args()
    from service.contracts.schema import Hyperparameters
    from service.shapes import Shape, read_config
    from service.training.plan import MARGIN, estimate

    hp = {"n_epochs": 1, "batch_size": 16, "max_seq_length": args.seq, "lora_r": 16, "lora_alpha": 16}
    shape = Shape.from_config(read_config(args.model))
    need = sum(estimate(shape, Hyperparameters(**hp), args.leave_mb, "unsloth").values())
    work = Path(tempfile.mkdtemp(prefix="tunedock-oom-"))
    data = str(work / "rows.jsonl")
    write_jsonl(data, text_rows(48, int(args.seq * 1.4)))
    env = {**os.environ, "TUNEDOCK_DATABASE_URL": f"sqlite+aiosqlite:///{work}/bench.db",
           "TUNEDOCK_DATA_DIR": str(work / "data"), "TUNEDOCK_BASE_MODELS": f"bench={args.model}",
           "TUNEDOCK_LOG_LEVEL": "info", "TUNEDOCK_POLL_SECONDS": "0.2", "TUNEDOCK_MAX_OOM_RETRIES": "3"}
    key = subprocess.run([sys.executable, "-m", "service", "keys", "create", "--tenant", "bench"], env=env,
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    api = subprocess.Popen([sys.executable, "-m", "service", "api", "--port", "8301"], env=env, cwd=ROOT,
                           stdout=open(work / "api.log", "w"), stderr=subprocess.STDOUT)
    runner = subprocess.Popen([sys.executable, "-m", "service", "runner"], env=env, cwd=ROOT,
                              stdout=open(work / "runner.log", "w"), stderr=subprocess.STDOUT)
    hog = subprocess.Popen([sys.executable, "-c", HOG], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
    try:
        assert hog.stdout is not None and hog.stdin is not None
        assert hog.stdout.readline().strip() == "ready"
        wait_http("http://127.0.0.1:8301/healthz")
        c = httpx.Client(base_url="http://127.0.0.1:8301", headers={"Authorization": f"Bearer {key}"},
                         timeout=60)
        time.sleep(45)  # the runner's warm child finishes importing
        with open(data, "rb") as f:
            file_id = c.post("/files", files={"file": ("oom.jsonl", f)}).json()["id"]
        job = c.post("/jobs", json={"base_model": "bench", "training_file": file_id, "deploy": False,
                                    "hyperparameters": hp}).json()
        while not any(e["type"] == "plan" for e in job_events(c, job["id"])):
            time.sleep(0.2)
        leave = int(need * (1 + MARGIN) * 1.05)
        hog.stdin.write(f"{leave}\n")
        hog.stdin.flush()
        held = hog.stdout.readline().strip()
        while (job := c.get(f"/jobs/{job['id']}").json())["status"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.5)
        events = job_events(c, job["id"])
    finally:
        for p in (runner, api):
            p.terminate()
            p.wait(60)
        hog.kill()
    plans = [e["data"]["micro_batch_size"] for e in events if e["type"] == "plan"]
    retries = [e for e in events if e["type"] == "oom_retry"]
    steps = [e for e in events if e["type"] == "metrics"]
    oom_to_step = None
    if retries and steps:
        after = [s["created_at"] for s in steps if s["created_at"] >= retries[0]["created_at"]]
        oom_to_step = after[0] - retries[0]["created_at"] if after else None
    import torch

    lines = [f"### Out-of-memory recovery under pressure that stays — {dt.date.today()}",
             f"Machine: {torch.cuda.get_device_name(0)}, torch {torch.__version__}; model: "
             f"`{Path(args.model).name}`; command: `python bench/oom_pressure.py --model <1B Llama>`", "",
             f"- a second process, started after the first plan, {held}",
             f"- job: {job['status']} (attempt {job['attempt']}); micro-batch per plan: {plans}",
             f"- OOM -> next step: {oom_to_step} s (event times have 1 s resolution)",
             *[f"- oom_retry event: {r['message'][:400]}" for r in retries],
             f"- error: {json.dumps(job.get('error'))}" if job["status"] != "succeeded" else "", ""]
    text = "\n".join(lines)
    print(text)
    if job["status"] != "succeeded":
        print((work / "runner.log").read_text()[-4000:])
        for log in (work / "data" / "runs").rglob("*.log"):
            print(log, log.read_text()[-3000:])
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
