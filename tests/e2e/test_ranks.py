"""One job on several devices (issue 34), proven on the CPU: a runner with two CPU devices (they
stand in for GPUs) trains a `gpus: 2` job as two data-parallel ranks over gloo. Its per-step
losses equal the one-rank run's with the same global batch; a rank killed mid-epoch takes the
attempt down and the job resumes, on two ranks and then on one, with the losses going on where
they were; pause and cancel stop both ranks and leave no process behind. Real runner processes,
real training (tiny Llama), moto S3."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import msgspec
import pytest

from tests.conftest import DATASETS, Api
from tests.e2e.test_resume import WORDS, losses, tiny_api, tiny_settings  # noqa: F401 - fixtures
from tests.e2e.test_training_runner import events, train_to_the_end
from tests.support.data import jsonl
from tests.support.processes import alive, descendants, start_runner, training_children

pytestmark = pytest.mark.slow
INTERVAL = 5
# Two ranks sum each step's loss and gradients in another order than one: float rounding, no
# more (fp32, one thread per rank, the same examples per step); 1.9e-6 at most when written.
TOLERANCE = 1e-5


@pytest.fixture
def two_devices(tiny_settings):  # noqa: ANN001, ANN201, F811
    return msgspec.structs.replace(tiny_settings, runner_cpu_devices=2, warm_child=False)


async def _submit(api: Api, s3, gpus: int, epochs: int = 2, rows: int = 160) -> str:  # noqa: ANN001
    rng = random.Random(5)
    body = jsonl([{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20)))}
                  for _ in range(rows)])
    key = f"ranks/{time.monotonic_ns()}.jsonl"
    s3.put_object(Bucket=DATASETS, Key=key, Body=body)
    r = await api.client.post("/jobs", headers=api.auth(), json={
        "base_model": "tiny", "training_file": f"s3://{DATASETS}/{key}", "deploy": False, "gpus": gpus,
        "hyperparameters": {"n_epochs": epochs, "batch_size": 8, "max_seq_length": 32,
                            "learning_rate": 1e-3, "checkpoint_interval_steps": INTERVAL, "seed": 3}})
    assert r.status_code == 201, r.text
    assert r.json()["gpus"] == gpus
    await api.wait_status(r.json()["id"], {"queued"}, timeout=60)
    return r.json()["id"]


def _rank(pid: int) -> int | None:
    """A rank process's RANK (its launcher has none)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    found = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
    return int(found[0]) if found else None


def _ranks(runner: int, job_id: str) -> dict[int, int]:
    """{rank: pid} of the job's live rank processes below the runner."""
    return {r: pid for pid in training_children(runner, job_id) if alive(pid) and (r := _rank(pid)) is not None}


async def _wait(what: str, check, timeout: float = 120):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
    return found


def _placements(evs: list[dict]) -> list[dict]:
    return [e["data"] for e in evs if e["type"] == "placement"]


def _gone(runner: int, job_id: str) -> bool:
    return not [p for p in training_children(runner, job_id) if alive(p)]


async def test_two_ranks_train_the_one_rank_losses_through_a_killed_rank_a_pause_and_a_resume_on_one(
        tiny_api: Api, two_devices, s3, tmp_path: Path) -> None:  # noqa: ANN001, F811
    api = tiny_api
    reference_id = await _submit(api, s3, gpus=1)
    await train_to_the_end(api, two_devices, reference_id, tmp_path / "reference.log")
    reference = {step: loss for _, step, loss in losses(await events(api, reference_id))}

    cancelled = await _submit(api, s3, gpus=2)
    job_id = await _submit(api, s3, gpus=2)
    runner = start_runner(two_devices, tmp_path / "two.log")
    try:
        # Cancel a two-rank job while it trains: both ranks and their launcher go.
        await _wait("the first job's ranks", lambda: _async(len(_ranks(runner.pid, cancelled)) == 2))
        await _wait("a step", lambda: _steps(api, cancelled))
        r = await api.client.post(f"/jobs/{cancelled}/cancel", headers=api.auth())
        assert r.status_code == 200, r.text
        await api.wait_status(cancelled, {"cancelled"}, timeout=30)
        await _wait("the cancelled job's processes to end", lambda: _async(_gone(runner.pid, cancelled)), 30)

        # SIGKILL rank 1 mid-epoch: the attempt fails (rank 0 and the launcher are stopped with
        # it) and the job resumes, on both devices again, from its latest resume point.
        await _wait("step 8", lambda: _steps(api, job_id, at_least=8))
        attempt_1 = _ranks(runner.pid, job_id)
        assert sorted(attempt_1) == [0, 1], attempt_1
        os.kill(attempt_1[1], signal.SIGKILL)
        await _wait("attempt 2", lambda: _attempt(api, job_id, 2), 60)
        assert not any(alive(pid) for pid in attempt_1.values())
        await _wait("attempt 2's ranks", lambda: _async(len(_ranks(runner.pid, job_id)) == 2))

        # Pause it in its second epoch: both ranks save, stop and exit.
        await _wait("step 22", lambda: _steps(api, job_id, at_least=22), 180)
        r = await api.client.post(f"/jobs/{job_id}/pause", headers=api.auth())
        assert r.status_code == 200, r.text
        await api.wait_status(job_id, {"paused"}, timeout=60)
        await _wait("the paused job's processes to end", lambda: _async(_gone(runner.pid, job_id)), 30)
    finally:
        runner.terminate()
        runner.wait(30)
    assert not [p for p in descendants(runner.pid) if alive(p)]

    # Resumed where only one device is free: it goes on as one rank, from the same checkpoint.
    one_device = msgspec.structs.replace(two_devices, runner_cpu_devices=1)
    r = await api.client.post(f"/jobs/{job_id}/resume", headers=api.auth())
    assert r.status_code == 200, r.text
    done = await train_to_the_end(api, one_device, job_id, tmp_path / "one.log")
    assert done["plan"]["ranks"] == 1, done["plan"]
    assert done["plan"]["micro_batch_size"] * done["plan"]["gradient_accumulation_steps"] == 8

    evs = await events(api, job_id)
    assert all(sorted(p["devices"]) == ["cpu0", "cpu1"] for p in _placements(evs) if p["ranks"] == 2)
    # Each of two ranks takes half of every step's 8 examples; one rank takes them all.
    plans = [(e["data"]["ranks"], e["data"]["micro_batch_size"] * e["data"]["gradient_accumulation_steps"])
             for e in evs if e["type"] == "plan"]
    assert plans and set(plans) == {(2, 4), (1, 8)}, plans
    assert any("on each of 2 ranks (ddp)" in e["message"] for e in evs if e["type"] == "plan")
    placed = [(p["ranks"], p["reason"]) for p in _placements(evs)]
    assert [n for n, _ in placed][-1] == 1 and {n for n, _ in placed[:-1]} == {2}, placed
    assert "resumed on the 1 free" in placed[-1][1], placed
    seen = losses(evs)
    attempts = sorted({a for a, _, _ in seen})
    assert len(attempts) == 3, attempts
    # Every step of every attempt, on two ranks or one, has the uninterrupted one-rank run's loss.
    assert {step for _, step, _ in seen} == set(reference)
    worst = max(abs(loss - reference[step]) for _, step, loss in seen)
    print(f"\nkilled rank / paused / resumed on 1: attempts {attempts}, "
          f"largest per-step loss difference from the uninterrupted run {worst:.2e}")
    assert worst <= TOLERANCE, worst
    # Each rank's tokens count (every rank gathers them), and a resume restores the count.
    assert done["trained_tokens"] == (await api.client.get(f"/jobs/{reference_id}", headers=api.auth())).json()["trained_tokens"]
    # Rank 0 alone wrote the checkpoints: one of each epoch.
    ckpts = (await api.client.get(f"/jobs/{job_id}/checkpoints", headers=api.auth())).json()["data"]
    assert [c["epoch"] for c in ckpts] == [1, 2]


async def _async(value):  # noqa: ANN001, ANN202
    return value


async def _steps(api: Api, job_id: str, at_least: int = 1) -> bool:
    return any(step >= at_least for _, step, _ in losses(await events(api, job_id)))


async def _attempt(api: Api, job_id: str, attempt: int) -> bool:
    job = (await api.client.get(f"/jobs/{job_id}", headers=api.auth())).json()
    return job["status"] == "running" and job["attempt"] == attempt


async def test_two_ranks_stop_together_on_the_eval_score_and_keep_the_best_epoch(
        tiny_api: Api, two_devices, s3, tmp_path: Path) -> None:  # noqa: ANN001, F811
    """Graded eval on two ranks: rank 0 answers and scores each epoch, and both ranks stop after
    the same epoch when the score stalls (the agreed stop; a rank stopping alone would leave the
    other waiting in its next step). The tiny random model never says the word: every score is
    0, so with patience 1 training stops after epoch 2 of 4 and keeps epoch 1's adapter."""
    api = tiny_api
    rng = random.Random(9)
    key = f"ranks/{time.monotonic_ns()}.jsonl"
    s3.put_object(Bucket=DATASETS, Key=key, Body=jsonl(
        [{"text": " ".join(rng.choice(WORDS) for _ in range(10))} for _ in range(64)]))
    grader = {"type": "string_check", "name": "says kestrel", "input": "{{sample.output_text}}",
              "reference": "{{item.label}}", "operation": "like"}
    r = await api.client.post("/jobs", headers=api.auth(), json={
        "base_model": "tiny", "training_file": f"s3://{DATASETS}/{key}", "deploy": False, "gpus": 2,
        "hyperparameters": {"n_epochs": 4, "batch_size": 8, "max_seq_length": 32, "learning_rate": 1e-3},
        "eval": {"grader": grader, "items": [{"prompt": "alpha bravo", "label": "kestrel"}],
                 "checkpoint_selection": "score", "early_stopping_patience": 1}})
    assert r.status_code == 201, r.text
    done = await train_to_the_end(api, two_devices, r.json()["id"], tmp_path / "runner.log")
    assert done["plan"]["ranks"] == 2
    stop = done["early_stopping"]
    assert stop is not None and (stop["watched"], stop["stopped_after_epoch"], stop["chosen_epoch"]) == \
        ("eval_score", 2, 1), stop
    ckpts = (await api.client.get(f"/jobs/{done['id']}/checkpoints", headers=api.auth())).json()["data"]
    assert [(c["epoch"], c["metrics"]["eval_score"]) for c in ckpts] == [(1, 0.0), (2, 0.0)]
    selected = [e for e in await events(api, done["id"]) if e["type"] == "checkpoint_selected"]
    assert [e["data"]["epoch"] for e in selected] == [1]


async def test_dpo_on_two_ranks_trains_the_one_rank_losses(tiny_api: Api, two_devices, s3, tmp_path: Path) -> None:  # noqa: ANN001, F811
    """Preference tuning on two ranks: the reference pass (the adapter disabled) and the policy's
    run on each rank's share of the pairs; the losses are the one-rank job's."""
    api = tiny_api
    rng = random.Random(4)

    def pair() -> dict:
        words = " ".join(rng.choice(WORDS) for _ in range(4))
        return {"input": {"messages": [{"role": "user", "content": words}]},
                "preferred_output": [{"role": "assistant", "content": f"aye {words}"}],
                "non_preferred_output": [{"role": "assistant", "content": words}]}

    key = f"ranks/{time.monotonic_ns()}.jsonl"
    s3.put_object(Bucket=DATASETS, Key=key, Body=jsonl([pair() for _ in range(48)]))
    ids = []
    for gpus in (1, 2):
        r = await api.client.post("/jobs", headers=api.auth(), json={
            "base_model": "tiny", "training_file": f"s3://{DATASETS}/{key}", "deploy": False, "gpus": gpus,
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}},
            "hyperparameters": {"n_epochs": 1, "batch_size": 4, "max_seq_length": 64, "learning_rate": 1e-3,
                                "seed": 5}})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
        await api.wait_status(ids[-1], {"queued"}, timeout=60)
        await train_to_the_end(api, two_devices, ids[-1], tmp_path / f"runner-{gpus}.log")
    one, two = [{step: loss for _, step, loss in losses(await events(api, j))} for j in ids]
    assert set(one) == set(two) and len(one) >= 10
    worst = max(abs(one[k] - two[k]) for k in one)
    print(f"\nDPO, 2 ranks vs 1: {len(one)} steps, largest per-step loss difference {worst:.2e}")
    assert worst <= TOLERANCE, worst
