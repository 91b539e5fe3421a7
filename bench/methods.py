"""DPO, continued training and the duration estimate on the GPU, through POST /jobs (issue 18).

    python bench/methods.py --model DIR [--out results.md]

One API + runner on a random-weight model of real shape (bench/make_llama.py; the numbers do not
depend on weight values): an unmeasured warm-up job (Unsloth's compile; it also calibrates the
estimate), a dry run, then the supervised job it estimated, a job continued from that job's
adapter, and a DPO job on generated preference pairs. Reported: each job's backend, memory plan
against the measured peak, real tokens/s, and the estimate against the actual duration; the DPO
job's rewards per epoch; the continued job's lineage and first loss against its parent's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner_overhead import finished_job, job_events, start_service  # noqa: E402
from synthetic import WORDS, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def chat_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": words(rng, rng.randint(20, 120))},
                          {"role": "assistant", "content": words(rng, rng.randint(50, 400))}]}
            for _ in range(n)]


def pair_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"input": {"messages": [{"role": "user", "content": words(rng, rng.randint(20, 120))}]},
             "preferred_output": [{"role": "assistant", "content": words(rng, rng.randint(50, 300))}],
             "non_preferred_output": [{"role": "assistant", "content": words(rng, rng.randint(50, 300))}]}
            for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out")
    ap.add_argument("--rows", type=int, default=512)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="methods-"))
    hp = {"n_epochs": 1, "batch_size": 8, "max_seq_length": 1024, "learning_rate": 2e-4}
    report: dict = {}
    c, procs = start_service(args.model, work, 8197)
    try:
        def upload(name: str, rows: list[dict]) -> str:
            path = work / name
            write_jsonl(str(path), rows)
            with path.open("rb") as f:
                return c.post("/files", files={"file": (name, f)}).json()["id"]

        def run(body: dict) -> dict:
            r = c.post("/jobs", json={"base_model": "bench", "deploy": False, **body})
            assert r.status_code == 201, r.text
            job = finished_job(c, r.json()["id"], work)
            metrics = [e["data"] for e in job_events(c, job["id"]) if e["type"] == "metrics"]
            checkpoints = c.get(f"/jobs/{job['id']}/checkpoints").json()["data"]
            summary = {"backend": next(e["data"]["backend"] for e in job_events(c, job["id"])
                                       if e["type"] == "backend"),
                       "plan_gib": job["plan"]["estimated_peak_bytes"] / GiB,
                       "micro_batch": job["plan"]["micro_batch_size"],
                       "peak_gib": max(m["gpu_memory_bytes"] or 0 for m in metrics) / GiB,
                       "real_tokens_per_s": job["trained_tokens"] / sum(m["step_seconds"] or 0 for m in metrics[1:])
                       if len(metrics) > 1 else None,
                       "first_loss": metrics[0]["loss"], "last_loss": metrics[-1]["loss"],
                       "estimate": job["estimate"], "continued_from": job["continued_from"],
                       "epochs": [c["metrics"] for c in checkpoints]}
            print(json.dumps(summary), flush=True)
            return {**summary, "job": job}

        train = upload("train.jsonl", chat_rows(args.rows, 1))
        warm = upload("warm.jsonl", chat_rows(96, 2))
        more = upload("more.jsonl", chat_rows(args.rows // 2, 3))
        pairs = upload("pairs.jsonl", pair_rows(args.rows // 2, 4))
        held = upload("held.jsonl", pair_rows(32, 5))
        report["warm-up"] = run({"training_file": warm, "hyperparameters": hp})
        dry = c.post("/jobs", json={"base_model": "bench", "training_file": train, "deploy": False,
                                    "hyperparameters": hp, "dry_run": True}).json()
        report["dry_run"] = {k: dry[k] for k in ("estimate", "plan")}
        sft = report["supervised"] = run({"training_file": train, "hyperparameters": hp})
        report["continued"] = run({"base_model": sft["job"]["fine_tuned_model"], "training_file": more,
                                   "hyperparameters": hp})
        report["dpo"] = run({"training_file": pairs, "validation_file": held,
                             "hyperparameters": {**hp, "n_epochs": 2, "learning_rate": 5e-5},
                             "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}})
    finally:
        for p in procs:
            p.terminate()
            p.wait(60)
    for r in report.values():
        r.pop("job", None)
    lines = [f"\n### Methods on the GPU ({dt.date.today()}, `python bench/methods.py`)\n",
             "| job | backend | micro-batch | plan GiB | peak GiB | plan / peak | real tokens/s | first → last loss | estimate s | actual s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("supervised", "continued", "dpo"):
        r = report[name]
        e = r["estimate"] or {}
        lines.append(f"| {name} | {r['backend']} | {r['micro_batch']} | {r['plan_gib']:.2f} | {r['peak_gib']:.2f} | "
                     f"{r['plan_gib'] / r['peak_gib']:.2f} | {r['real_tokens_per_s'] or 0:.0f} | "
                     f"{r['first_loss']:.3f} → {r['last_loss']:.3f} | {e.get('seconds')} | {e.get('actual_seconds')} |")
    lines.append(f"\nDPO epochs: {json.dumps(report['dpo']['epochs'])}")
    lines.append(f"\nContinued: {json.dumps(report['continued']['continued_from'])}")
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps(report))
    if args.out:
        with open(args.out, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
