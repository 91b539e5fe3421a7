"""Reinforcement fine-tuning speed (issue 31, part 5): a GRPO job through POST /jobs on a model of
real shape (random weights: the completions never end early, so every one is max_completion_tokens
long and the rates compare across runs), with the rollouts sampled by the training process
(transformers' generate; Unsloth's patched model on CUDA), by vLLM (the serving sidecar started
beside it, TUNEDOCK_ROLLOUT_URL: service/training/rollouts.py), or both side by side.

    python bench/grpo.py --model DIR [--prompts 64] [--batch 8] [--group 8] [--completion 256]
                         [--rollouts trainer|vllm|both] [--vllm-share 0.3] [--repeat N] [--vllm-first] [--out f.md]

One API, and with vLLM rollouts one `python -m serving` (vLLM holding --vllm-share of the GPU for
the whole run, so both kinds of job train next to the same neighbour); each job gets a runner of its
own, with or without the rollout URL. With --repeat N and both kinds, the order alternates per
repeat (trainer first, then vllm first), so warm-up and drift fall on both.

Reported from the job's own metrics events, steps after the first (which pays compilation):
seconds per step (median and range), steps/s, sampled (rollout) tokens/s = batch x group x mean
completion length / step seconds, all tokens/s (prompts and completions, as the job counts them),
and the peak GPU memory against the plan. A step is generation plus the reference and policy
passes; the split is not measured separately here.
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
from runner_overhead import finished_job, job_events, wait_http  # noqa: E402
from synthetic import write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRADER = {"type": "string_check", "name": "says yes", "input": "{{sample.output_text}}",
          "reference": "yes", "operation": "ilike"}


def prompts(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Question {i}: is {i} an even number? Answer yes or no, "
                                                      "then explain briefly."}]} for i in range(n)]


def main() -> None:  # noqa: PLR0915
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--completion", type=int, default=256)
    ap.add_argument("--rollouts", choices=["trainer", "vllm", "both"], default="trainer")
    ap.add_argument("--vllm-share", type=float, default=0.3, help="vLLM's fraction of the GPU")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--vllm-first", action="store_true", help="with both: start the alternation with vLLM")
    ap.add_argument("--settle", type=float, default=15)
    ap.add_argument("--out")
    args = ap.parse_args()
    import torch

    work = Path(tempfile.mkdtemp(prefix="tunedock-grpo-"))
    data = str(work / "prompts.jsonl")
    write_jsonl(data, prompts(args.prompts))
    api_port, vllm_port = 8313, 8314
    api_url = f"http://127.0.0.1:{api_port}"
    kinds = ["trainer", "vllm"] if args.rollouts == "both" else [args.rollouts]
    if args.vllm_first:
        kinds.reverse()
    env = {**os.environ, "TUNEDOCK_DATABASE_URL": f"sqlite+aiosqlite:///{work}/bench.db",
           "TUNEDOCK_DATA_DIR": str(work / "data"), "TUNEDOCK_BASE_MODELS": f"bench={args.model}",
           "TUNEDOCK_LOG_LEVEL": "warning", "TUNEDOCK_POLL_SECONDS": "0.2"}
    if torch.cuda.is_available():
        env["TUNEDOCK_RUNNER_GPUS"] = "0"
    if "vllm" in kinds:
        env.update(TUNEDOCK_SERVE_MODEL="bench", TUNEDOCK_VLLM_PORT=str(vllm_port), TUNEDOCK_API_URL=api_url,
                   TUNEDOCK_VLLM_MAX_MODEL_LEN=str(max(512, 128 + args.completion)),
                   TUNEDOCK_MAX_LORA_RANK="16", TUNEDOCK_ADAPTER_DIR=str(work / "adapters"),
                   TUNEDOCK_INTERNAL_API_KEY="bench-internal-key", TUNEDOCK_SERVING_API_KEY="bench-serving-key")
        if torch.cuda.is_available():  # split the GPU as deploy/README.md says
            total_mib = torch.cuda.get_device_properties(0).total_memory >> 20
            env.update(TUNEDOCK_VLLM_MEMORY_FRACTION=str(args.vllm_share),
                       TUNEDOCK_RUNNER_DEVICE_MEMORY_MB=str(int(total_mib * (1 - args.vllm_share)) - 2048))
        else:
            env.update(TUNEDOCK_VLLM_KV_CACHE_GIB="1")
    key = subprocess.run([sys.executable, "-m", "service", "keys", "create", "--tenant", "bench"],
                         env=env, cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()

    def start(name: str, argv: list[str], extra: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", *argv], env={**env, **(extra or {})}, cwd=ROOT,
                                start_new_session=True, stdout=open(work / f"{name}.log", "a"),
                                stderr=subprocess.STDOUT)

    procs = [start("api", ["service", "api", "--port", str(api_port)])]
    runs = []
    try:
        wait_http(f"{api_url}/healthz")
        if "vllm" in kinds:
            procs.append(start("serving", ["serving"]))
            wait_http(f"http://127.0.0.1:{vllm_port}/health", timeout=600)
        c = httpx.Client(base_url=api_url, timeout=120, headers={"Authorization": f"Bearer {key}"})
        with open(data, "rb") as f:
            file_id = c.post("/files", files={"file": ("prompts.jsonl", f)}).json()["id"]
        body = {"base_model": "bench", "training_file": file_id, "deploy": False,
                "hyperparameters": {"n_epochs": 1, "batch_size": args.batch, "learning_rate": 1e-5,
                                    "max_seq_length": 64 + args.completion, "lora_r": 16, "lora_alpha": 16},
                "method": {"type": "reinforcement", "reinforcement": {
                    "grader": GRADER, "hyperparameters": {"group_size": args.group,
                                                          "max_completion_tokens": args.completion}}}}
        for i in range(args.repeat):
            for kind in (kinds if i % 2 == 0 else kinds[::-1]):
                url = {"TUNEDOCK_ROLLOUT_URL": f"http://127.0.0.1:{vllm_port}/v1"} if kind == "vllm" else {}
                runner = start("runner", ["service", "runner"], url)
                try:
                    time.sleep(args.settle)  # the warm child finishes importing
                    job = finished_job(c, c.post("/jobs", json=body).json()["id"], work, f"GRPO run {i + 1}")
                finally:
                    runner.terminate()
                    runner.wait(60)
                evs = job_events(c, job["id"])
                said = next((e for e in evs if e["type"] == "rollouts"), None)
                warned = [e["message"] for e in evs if e["type"] == "warning" and "rollouts" in e["message"]]
                runs.append({"job": job, "kind": "vllm" if said else f"trainer{' (' + warned[0] + ')' if warned else ''}",
                             "steps": [e["data"] for e in evs if e["type"] == "metrics"],
                             "backend": next((e["data"]["backend"] for e in evs if e["type"] == "backend"), "?")})
    except KeyboardInterrupt:  # `timeout -s INT`: report the jobs that finished
        print(f"interrupted after {len(runs)} job(s)", file=sys.stderr)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        logs = os.environ.get("OUT")
        if logs:  # the device machine brings $OUT back
            for log in work.glob("*.log"):
                (Path(logs) / f"grpo-{log.name}").write_bytes(log.read_bytes()[-200_000:])

    lines = [f"### GRPO through POST /jobs — {dt.date.today()}",
             f"Machine: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}, torch "
             f"{torch.__version__}; command: `python bench/grpo.py --model <model> --prompts {args.prompts} "
             f"--batch {args.batch} --group {args.group} --completion {args.completion} --rollouts {args.rollouts} "
             f"--vllm-share {args.vllm_share} --repeat {args.repeat}{' --vllm-first' * args.vllm_first}`", "",
             "| run | rollouts | backend, device | micro-batch | s/step median (min-max) | steps/s | rollout tokens/s | "
             "all tokens/s | completion length | peak / plan GiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, run in enumerate(runs):
        job, steps = run["job"], run["steps"][1:]
        if job["status"] != "succeeded" or not steps:
            lines.append(f"| {i + 1} | {run['kind']} | {job['status']}: {job.get('error')} |")
            continue
        secs = [s["step_seconds"] for s in steps if s.get("step_seconds")]
        lengths = [s["rewards"]["completion_length"] for s in steps]
        med = statistics.median(secs)
        sampled = args.batch * args.group * statistics.mean(lengths) / med
        rates = [s["tokens_per_second"] for s in steps if s.get("tokens_per_second")]
        peak = max((s.get("gpu_memory_bytes") or 0 for s in steps), default=0)
        plan = job["plan"] or {}
        lines.append(f"| {i + 1} | {run['kind']} | {run['backend']}, {plan.get('device')} | {plan.get('micro_batch_size')} | "
                     f"{med:.2f} ({min(secs):.2f}-{max(secs):.2f}) | {1 / med:.3f} | {sampled:,.0f} | "
                     f"{statistics.median(rates):,.0f} | {statistics.mean(lengths):.0f} | "
                     f"{peak / 2**30:.1f} / {(plan.get('estimated_peak_bytes') or 0) / 2**30:.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
