"""Several jobs on one device (issue 32): a runner whose device has room for two jobs' plans runs
two side by side and holds the third until one leaves; cancelling, killing or pausing one leaves
its neighbour training. A real runner process, real training children on the CPU (the CPU slot stands in for a
GPU; `runner_device_memory_mb` is the memory its jobs share), a tiny Llama, moto S3."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import msgspec
import pytest

from service.contracts import schema as s
from service.runner.placement import Device
from service.training.plan import MARGIN
from tests.conftest import DATASETS, Api
from tests.e2e.test_resume import WORDS, tiny_api, tiny_settings  # noqa: F401 - fixtures
from tests.e2e.test_training_runner import events
from tests.support.data import jsonl
from tests.support.processes import alive, start_runner, training_children

pytestmark = pytest.mark.slow


async def _submit(api: Api, s3, rows: int, epochs: int) -> dict:  # noqa: ANN001
    rng = random.Random(rows)
    body = jsonl([{"text": " ".join(rng.choice(WORDS) for _ in range(12))} for _ in range(rows)])
    key = f"shared/{time.monotonic_ns()}.jsonl"
    s3.put_object(Bucket=DATASETS, Key=key, Body=body)
    r = await api.client.post("/jobs", headers=api.auth(), json={
        "base_model": "tiny", "training_file": f"s3://{DATASETS}/{key}", "deploy": False,
        "hyperparameters": {"n_epochs": epochs, "batch_size": 4, "micro_batch_size": 4,
                            "max_seq_length": 32, "learning_rate": 1e-3}})
    assert r.status_code == 201, r.text
    return await api.wait_status(r.json()["id"], {"queued"}, timeout=60)


def _placements(evs: list[dict]) -> list[dict]:
    return [e for e in evs if e["type"] == "placement"]


def _status_at(evs: list[dict], status: str) -> int:
    return next(e["created_at"] for e in evs if e["type"] == "status" and e["data"]["status"] == status)


async def test_two_jobs_share_a_device_the_third_waits_and_cancel_leaves_the_neighbour(
        tiny_api: Api, tiny_settings, s3, tmp_path: Path) -> None:  # noqa: ANN001, F811
    api = tiny_api
    first = await _submit(api, s3, rows=400, epochs=2)
    second = await _submit(api, s3, rows=400, epochs=2)
    third = await _submit(api, s3, rows=400, epochs=1)
    # The device's pool holds two of these jobs' plans and half of a third: each trains at a
    # fixed micro-batch, so no smaller plan of it fits what is left.
    plan = Device(tiny_settings, None).plan(msgspec.convert(first, s.Job), None)
    assert plan is not None
    peak = plan.estimated_peak_bytes * (1 + MARGIN)
    # Not deterministic: that trains on one thread whatever the share (see the threads below).
    settings = msgspec.structs.replace(tiny_settings, runner_jobs_per_gpu=3, runner_memory_reserve_mb=0,
                                       deterministic_training=False,
                                       runner_device_memory_mb=int(2.5 * peak) >> 20)
    runner = start_runner(settings, tmp_path / "runner.log")
    try:
        a, b, c = first["id"], second["id"], third["id"]
        deadline = time.monotonic() + 180
        while True:
            statuses = [(await api.client.get(f"/jobs/{j}", headers=api.auth())).json()["status"]
                        for j in (a, b, c)]
            if statuses[:2] == ["running", "running"]:
                break
            assert time.monotonic() < deadline, statuses
            await asyncio.sleep(0.1)
        # Both train (their children have started), and the third stays queued: no room for it.
        for _ in range(30):
            assert (await api.client.get(f"/jobs/{c}", headers=api.auth())).json()["status"] == "queued"
            await asyncio.sleep(0.1)
        placed = {j: _placements(await events(api, j)) for j in (a, b)}
        assert [p["data"]["neighbours"] for p in placed[b]] == [[a]], placed
        assert "beside 1 other job" in placed[b][0]["message"] and "the CPU" in placed[b][0]["message"]

        r = await api.client.post(f"/jobs/{a}/cancel", headers=api.auth())
        assert r.status_code == 200, r.text
        await api.wait_status(a, {"cancelled"}, timeout=30)
        deadline = time.monotonic() + 30
        while any(map(alive, training_children(runner.pid, a))):
            assert time.monotonic() < deadline, "the cancelled job's child is still running"
            await asyncio.sleep(0.1)
        # The neighbour kept training: still running, still its first attempt.
        job_b = (await api.client.get(f"/jobs/{b}", headers=api.auth())).json()
        assert (job_b["status"], job_b["attempt"]) == ("running", 1), job_b

        # The third takes the room the first left, beside the second.
        await api.wait_status(c, {"running"}, timeout=60)
        deadline = time.monotonic() + 60
        while not (children_c := [p for p in training_children(runner.pid, c) if alive(p)]):
            assert time.monotonic() < deadline, "the third job's child did not start"
            await asyncio.sleep(0.1)
        # Kill the second's child: it is retried and resumes; the third trains on, untouched.
        killed = [p for p in training_children(runner.pid, b) if alive(p)]
        assert killed
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        await _wait_attempt(api, b, 2)
        job_c = (await api.client.get(f"/jobs/{c}", headers=api.auth())).json()
        assert (job_c["status"], job_c["attempt"]) == ("running", 1), job_c
        assert all(map(alive, children_c))
        # Pause the third: it saves and stops; the second trains on.
        r = await api.client.post(f"/jobs/{c}/pause", headers=api.auth())
        assert r.status_code == 200, r.text
        await api.wait_status(c, {"paused"}, timeout=60)
        job_b = (await api.client.get(f"/jobs/{b}", headers=api.auth())).json()
        assert (job_b["status"], job_b["attempt"]) == ("running", 2), job_b
        r = await api.client.post(f"/jobs/{c}/resume", headers=api.auth())
        assert r.status_code == 200, r.text
        done_c = await api.wait_status(c, {"succeeded", "failed", "cancelled"}, timeout=300)
        done_b = await api.wait_status(b, {"succeeded", "failed", "cancelled"}, timeout=300)
    finally:
        runner.terminate()
        runner.wait(30)
    log = (tmp_path / "runner.log").read_text()[-3000:]
    assert (done_b["status"], done_b["attempt"]) == ("succeeded", 2), (done_b, log)
    assert done_c["status"] == "succeeded", (done_c, log)
    evs_a, evs_b, evs_c = await events(api, a), await events(api, b), await events(api, c)
    # The third was paused and resumed on the way (from a resume point if it had taken a step).
    statuses_c = [e["data"]["status"] for e in evs_c if e["type"] == "status"]
    assert statuses_c[statuses_c.index("paused"):] == ["paused", "queued", "running", "succeeded"], statuses_c
    assert [e["data"]["attempt"] for e in evs_b if e["type"] == "status" and e["data"]["status"] == "running"] == [1, 2]
    # The third started only once the first had left, beside the second.
    assert _status_at(evs_c, "running") >= _status_at(evs_a, "cancelled")
    assert _placements(evs_c)[0]["data"]["neighbours"] == [b]
    # Each child trained with its share of the cores, not torch's default of all of them.
    share = max(1, (os.cpu_count() or 1) // 3)
    threads = {e["data"]["cpu_threads"] for evs in (evs_a, evs_b, evs_c) for e in evs if e["type"] == "backend"}
    assert threads == {share}, threads


async def _wait_attempt(api: Api, job_id: str, attempt: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        job = (await api.client.get(f"/jobs/{job_id}", headers=api.auth())).json()
        if job["status"] == "running" and job["attempt"] == attempt:
            return
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)

