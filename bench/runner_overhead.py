"""Runner overhead and backend choice, one run side by side (GPU; issues 3 and 6).

    python bench/runner_overhead.py --model DIR [--out results.md]

1. Submits a QLoRA job (r=16 all linear, batch 8 x 1024, 2 epochs of 256 rows = 64 steps) through
   POST /jobs to a real API, and lets `python -m service runner` train it with Unsloth.
2. Runs bench/bare_train.py with the same model, data and hyperparameters: Unsloth, then
   transformers + PEFT + bitsandbytes.
Prints a table with the ratios, and the memory plan's estimate against the measured peak.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import text_rows, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 10
GiB = 2**30


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def start_service(model: str, work: Path, port: int) -> tuple[httpx.Client, list[subprocess.Popen]]:
    """An API on `port` and one runner over SQLite in `work`, serving `model` as "bench": a client
    with a fresh key, and the two processes (terminate them when done)."""
    env = {**os.environ, "TUNEDOCK_DATABASE_URL": f"sqlite+aiosqlite:///{work}/bench.db",
           "TUNEDOCK_DATA_DIR": str(work / "data"), "TUNEDOCK_BASE_MODELS": f"bench={model}",
           "TUNEDOCK_LOG_LEVEL": "warning", "TUNEDOCK_POLL_SECONDS": "0.2"}
    key = subprocess.run([sys.executable, "-m", "service", "keys", "create", "--tenant", "bench"],
                         env=env, cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    procs = [subprocess.Popen([sys.executable, "-m", "service", *args], env=env, cwd=ROOT,
                              stdout=open(work / f"{args[0]}.log", "w"), stderr=subprocess.STDOUT)
             for args in (["api", "--port", str(port)], ["runner"])]
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                        headers={"Authorization": f"Bearer {key}"}), procs


def finished_job(c: httpx.Client, job_id: str, work: Path, what: str = "job") -> dict:
    """Wait for the job to end; if it did not succeed, print the runner's and children's logs
    (under `work`, as start_service lays them out) and raise."""
    while (job := c.get(f"/jobs/{job_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(1)
    if job["status"] != "succeeded":
        print((work / "runner.log").read_text()[-4000:])
        for log in (work / "data" / "runs").rglob("child-*.log"):
            print(log.read_text()[-6000:])
        raise RuntimeError(f"{what}: job ended {job['status']}: {job.get('error')}")
    return job


def job_events(c: httpx.Client, job_id: str) -> list[dict]:
    events, after = [], None
    while True:
        page = c.get(f"/jobs/{job_id}/events",
                     params={"limit": 100, **({"after": after} if after else {})}).json()
        events += page["data"]
        if not page["has_more"]:
            return events
        after = page["last_id"]


def job_timeline(events: list[dict], submitted: float) -> dict[str, float]:
    """Seconds from submit to each stage (event times have 1 s resolution)."""

    def at(pred) -> float:  # noqa: ANN001
        return next(e["created_at"] for e in events if pred(e)) - submitted

    return {"queued": at(lambda e: e["type"] == "status" and e["data"]["status"] == "queued"),
            "running": at(lambda e: e["type"] == "status" and e["data"]["status"] == "running"),
            "child_imported": at(lambda e: e["type"] == "backend"),
            "model_loaded": at(lambda e: e["type"] == "loaded"),
            "train_begin": at(lambda e: e["type"] == "train_begin"),
            "first_step": at(lambda e: e["type"] == "metrics")}


def through_runner(model: str, data: str, validation: str, work: Path) -> dict:
    env = {**os.environ, "TUNEDOCK_DATABASE_URL": f"sqlite+aiosqlite:///{work}/bench.db",
           "TUNEDOCK_DATA_DIR": str(work / "data"), "TUNEDOCK_BASE_MODELS": f"bench={model}",
           "TUNEDOCK_LOG_LEVEL": "warning", "TUNEDOCK_POLL_SECONDS": "0.2"}
    key = subprocess.run([sys.executable, "-m", "service", "keys", "create", "--tenant", "bench"],
                         env=env, cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    api = subprocess.Popen([sys.executable, "-m", "service", "api", "--port", "8199"], env=env, cwd=ROOT,
                           stdout=open(work / "api.log", "w"), stderr=subprocess.STDOUT)
    runner = subprocess.Popen([sys.executable, "-m", "service", "runner"], env=env, cwd=ROOT,
                              stdout=open(work / "runner.log", "w"), stderr=subprocess.STDOUT)
    try:
        wait_http("http://127.0.0.1:8199/healthz")
        c = httpx.Client(base_url="http://127.0.0.1:8199", headers={"Authorization": f"Bearer {key}"},
                         timeout=60)
        with open(data, "rb") as f:
            file_id = c.post("/files", files={"file": ("bench.jsonl", f)}).json()["id"]
        with open(validation, "rb") as f:
            val_id = c.post("/files", files={"file": ("val.jsonl", f)}).json()["id"]
        submitted = time.time()
        # A separate validation file keeps the training rows identical to the bare runs'.
        job = c.post("/jobs", json={"base_model": "bench", "training_file": file_id,
                                    "validation_file": val_id, "deploy": False,
                                    "hyperparameters": {"n_epochs": 2, "batch_size": 8,
                                                        "max_seq_length": 1024, "lora_r": 16,
                                                        "lora_alpha": 16}}).json()
        while (job := c.get(f"/jobs/{job['id']}").json())["status"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(1)
        done = time.time()
        events = job_events(c, job["id"])
    finally:
        for p in (runner, api):
            p.terminate()
            p.wait(60)
    if job["status"] != "succeeded":
        print((work / "runner.log").read_text()[-5000:])
        for run_log in (work / "data" / "runs").rglob("child-*.log"):
            print(run_log.read_text()[-5000:])
        raise RuntimeError(f"job ended {job['status']}: {job.get('error')}")
    metrics = [e for e in events if e["type"] == "metrics"]
    rates = [e["data"]["tokens_per_second"] for e in metrics if e["data"]["tokens_per_second"]]
    timeline = job_timeline(events, submitted)
    loaded = next(e for e in events if e["type"] == "loaded")["data"]["seconds"]
    step_s = [e["data"]["step_seconds"] for e in metrics if e["data"].get("step_seconds")]
    return {"steps": len(metrics), "steady_tokens_per_s": statistics.median(rates[WARMUP:]),
            "median_step_s": statistics.median(step_s[WARMUP:]),
            "peak_reserved_bytes": max(e["data"]["gpu_memory_bytes"] or 0 for e in metrics),
            "plan_bytes": job["plan"]["estimated_peak_bytes"], "plan": job["plan"],
            "submit_to_first_step_s": timeline["first_step"], "load_s": loaded,
            "submit_to_adapter_s": done - submitted, "timeline": timeline, "backend": next(
                e for e in events if e["type"] == "backend")["data"]}


def bare(model: str, data: str, backend: str, block_compile: str = "0") -> dict:
    # The service turns Unsloth's per-block torch.compile off (service/training/child.py);
    # the baseline runs the same way unless asked otherwise.
    env = {**os.environ, "UNSLOTH_BLOCK_COMPILE": block_compile}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bare_train.py"), "--model", model,
                          "--data", data, "--backend", backend, "--warmup-steps", str(WARMUP)],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        print(out.stdout[-3000:], out.stderr[-5000:])
        raise RuntimeError(f"bare {backend} failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tunedock-bench-"))
    data = str(work / "rows.jsonl")
    write_jsonl(data, text_rows(256, 1400))  # every row fills 1024 tokens
    validation = str(work / "validation.jsonl")
    write_jsonl(validation, text_rows(16, 1400, seed=1))
    runner = through_runner(args.model, data, validation, work)
    unsloth = bare(args.model, data, "unsloth")
    unsloth_compiled = bare(args.model, data, "unsloth", block_compile="1")
    peft = bare(args.model, data, "peft")
    import torch

    lines = [
        f"### Runner overhead and backend choice — {dt.date.today()}",
        f"Machine: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
        f"versions {json.dumps(runner['backend']['versions'])}, Python {platform.python_version()}",
        "Command: `python bench/runner_overhead.py --model <1B Llama, random weights>` "
        "(QLoRA r=16 all linear, batch 8 x 1024, 64 steps; steady = median after 10 steps)",
        "",
        "Unsloth runs use UNSLOTH_BLOCK_COMPILE=0 as the service does, except the row that says otherwise.",
        "",
        "| run | steps | steady tokens/s | median s/step | peak reserved GiB |",
        "|---|---|---|---|---|",
        f"| through POST /jobs + runner (Unsloth) | {runner['steps']} | {runner['steady_tokens_per_s']:,.0f} | {runner['median_step_s']:.3f} | {runner['peak_reserved_bytes'] / GiB:.2f} |",
        f"| bare Unsloth script | {unsloth['steps']} | {unsloth['steady_tokens_per_s']:,.0f} | {unsloth['median_step_s']:.3f} | {unsloth['peak_reserved_bytes'] / GiB:.2f} |",
        f"| bare Unsloth script, UNSLOTH_BLOCK_COMPILE=1 (Unsloth's default) | {unsloth_compiled['steps']} | {unsloth_compiled['steady_tokens_per_s']:,.0f} | {unsloth_compiled['median_step_s']:.3f} | {unsloth_compiled['peak_reserved_bytes'] / GiB:.2f} |",
        f"| bare transformers + PEFT + bitsandbytes | {peft['steps']} | {peft['steady_tokens_per_s']:,.0f} | {peft['median_step_s']:.3f} | {peft['peak_reserved_bytes'] / GiB:.2f} |",
        "",
        f"- bare Unsloth without / with block compile: "
        f"**{unsloth['steady_tokens_per_s'] / unsloth_compiled['steady_tokens_per_s']:.3f}x** throughput",
        f"- runner / bare Unsloth throughput: **{runner['steady_tokens_per_s'] / unsloth['steady_tokens_per_s']:.3f}x** (target >= 0.95)",
        f"- Unsloth / PEFT throughput: **{unsloth['steady_tokens_per_s'] / peft['steady_tokens_per_s']:.2f}x**; "
        f"PEFT / Unsloth peak memory: **{peft['peak_reserved_bytes'] / unsloth['peak_reserved_bytes']:.2f}x**",
        f"- memory plan estimate {runner['plan_bytes'] / GiB:.2f} GiB vs measured peak "
        f"{runner['peak_reserved_bytes'] / GiB:.2f} GiB through the runner "
        f"(ratio {runner['plan_bytes'] / runner['peak_reserved_bytes']:.2f}); plan picked micro-batch "
        f"{runner['plan']['micro_batch_size']} x {runner['plan']['gradient_accumulation_steps']}",
        f"- submit -> first training step {runner['submit_to_first_step_s']:.1f} s (model load "
        f"{runner['load_s']:.1f} s; target <= load + 10 s); submit -> adapter in storage "
        f"{runner['submit_to_adapter_s']:.1f} s",
        "- timeline after submit (s, event times have 1 s resolution): "
        + ", ".join(f"{k} {v:.0f}" for k, v in runner["timeline"].items()),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    print(json.dumps({"runner": runner, "bare_unsloth": unsloth, "bare_unsloth_compiled": unsloth_compiled,
                      "bare_peft": peft}, default=str))
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
