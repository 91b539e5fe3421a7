"""Resume you can trust: a job killed at a random step resumes from its latest mid-epoch resume
point and reproduces, step for step, the losses of the same job run without interruption."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import msgspec
import pytest

from service.settings import BaseModelEntry
from tests.conftest import ARTIFACTS, DATASETS, Api, api_client
from tests.e2e.test_training_runner import events, kill_runner_after_step, train_to_the_end
from tests.support.data import jsonl
from tests.support.processes import start_runner

pytestmark = pytest.mark.slow
INTERVAL = 7
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()


@pytest.fixture
def tiny_settings(e2e_settings, tiny_llama_dir: Path):  # noqa: ANN001, ANN201
    return msgspec.structs.replace(
        e2e_settings, base_models=(BaseModelEntry(alias="tiny", source=str(tiny_llama_dir)),),
        lease_seconds=3.0, heartbeat_seconds=0.5, deterministic_training=True)


async def submit(api: Api, s3) -> str:  # noqa: ANN001
    rng = random.Random(1)
    rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20)))} for _ in range(220)]
    key = f"resume/{time.monotonic_ns()}.jsonl"
    s3.put_object(Bucket=DATASETS, Key=key, Body=jsonl(rows))
    r = await api.client.post("/jobs", headers=api.auth(), json={
        "base_model": "tiny", "training_file": f"s3://{DATASETS}/{key}", "deploy": False,
        "hyperparameters": {"n_epochs": 2, "batch_size": 4, "max_seq_length": 32, "learning_rate": 1e-3,
                            "checkpoint_interval_steps": INTERVAL, "seed": 11}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def losses(evs: list[dict]) -> list[tuple[int, int, float]]:
    """(attempt, step, loss) of every metrics event, in order."""
    return [(e["data"]["attempt"], e["data"]["step"], e["data"]["loss"]) for e in evs if e["type"] == "metrics"]


@pytest.fixture
async def tiny_api(tiny_settings):  # noqa: ANN001, ANN201
    async with api_client(tiny_settings) as api:
        yield api


async def test_killed_at_a_random_step_resumes_with_identical_losses(tiny_api: Api, tiny_settings, s3,
                                                                     tmp_path: Path) -> None:  # noqa: ANN001
    api = tiny_api
    reference_id = await submit(api, s3)
    await train_to_the_end(api, tiny_settings, reference_id, tmp_path / "reference.log")
    reference = {step: loss for _, step, loss in losses(await events(api, reference_id))}
    total = max(reference)
    assert total >= 80

    job_id = await submit(api, s3)
    kill_at = random.Random(time.time_ns()).randint(2 * INTERVAL + 1, total - 2 * INTERVAL)
    await kill_runner_after_step(api, tiny_settings, job_id, kill_at, tmp_path / "killed.log")
    # What a child killed in the middle of a large upload leaves: an open multipart upload under
    # the job's prefix (planted, as the kill may have missed one). The next attempt aborts it.
    left = s3.create_multipart_upload(Bucket=ARTIFACTS, Key=f"jobs/{job_id}/resume/step-0/optimizer.pt")
    s3.upload_part(Bucket=ARTIFACTS, Key=left["Key"], UploadId=left["UploadId"], PartNumber=1, Body=b"x")
    done = await train_to_the_end(api, tiny_settings, job_id, tmp_path / "resumed.log")
    assert done["attempt"] == 2
    assert not s3.list_multipart_uploads(Bucket=ARTIFACTS, Prefix=f"jobs/{job_id}/").get("Uploads")

    evs = await events(api, job_id)
    seen = losses(evs)
    reached = max(step for attempt, step, _ in seen if attempt == 1)
    resumed_at = min(step for attempt, step, _ in seen if attempt == 2) - 1
    redone = reached - resumed_at
    print(f"\nresume: killed after step {reached} (aimed at {kill_at}), resumed from step {resumed_at}, "
          f"{redone} steps redone (interval {INTERVAL}); {total} steps in all")
    assert 0 <= redone <= INTERVAL
    assert any(e["type"] == "resumed" for e in evs)
    # Every step, from either attempt, has the uninterrupted run's loss: same data, same order.
    worst = max(abs(loss - reference[step]) for _, step, loss in seen)
    assert {step for _, step, _ in seen} == set(reference)
    assert worst <= 1e-5, worst
    print(f"largest per-step loss difference from the uninterrupted run: {worst:.2e}")


async def test_paused_job_frees_its_runner_and_resumes_without_redoing_a_step(tiny_settings, s3,
                                                                              tmp_path: Path) -> None:  # noqa: ANN001
    """Through the official `openai` SDK: pause a running job (it saves a resume point at the
    next step and lets its child go), resume it, and it succeeds with no step or epoch twice."""
    import openai

    from tests.support.live import serve
    from tests.support.processes import alive, training_children

    def scenario() -> tuple[list, list, dict]:
        with serve(tiny_settings) as (url, keys):
            oai = openai.OpenAI(base_url=f"{url}/v1", api_key=keys["acme"], max_retries=0)
            rng = random.Random(2)
            rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(12))} for _ in range(220)]
            upload = oai.files.create(file=("pause.jsonl", jsonl(rows)), purpose="fine-tune")
            job = oai.fine_tuning.jobs.create(model="tiny", training_file=upload.id,
                                              hyperparameters={"n_epochs": 2, "batch_size": 4},
                                              extra_body={"deploy": False, "max_seq_length": 32})
            runner = start_runner(tiny_settings, tmp_path / "runner.log")
            try:
                wait = _waiter(oai, job.id)
                wait(lambda j: any(e.type == "metrics" for e in
                                   oai.fine_tuning.jobs.list_events(job.id, limit=100).data), "a step")
                children = training_children(runner.pid, job.id)
                assert oai.fine_tuning.jobs.pause(job.id).status in {"running", "paused"}
                paused = wait(lambda j: j.status == "paused", "the pause")
                deadline = time.monotonic() + 10
                while any(map(alive, children)):
                    assert time.monotonic() < deadline, "the paused job's child kept running"
                    time.sleep(0.1)
                time.sleep(2)  # paused stays paused
                assert oai.fine_tuning.jobs.retrieve(job.id).status == "paused"
                assert oai.fine_tuning.jobs.resume(job.id).status == "queued"
                done = wait(lambda j: j.status in {"succeeded", "failed", "cancelled"}, "the end")
            finally:
                runner.terminate()
                runner.wait(30)
            # Newest first, as OpenAI lists them; every page followed, then put in order.
            events = list(reversed(list(oai.fine_tuning.jobs.list_events(job.id, limit=100))))
            ckpts = oai.fine_tuning.jobs.checkpoints.list(job.id).data
            return events, ckpts, {"paused": paused, "done": done}

    events, ckpts, states = await asyncio.to_thread(scenario)
    assert states["done"].status == "succeeded", states["done"].error
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert len(steps) == len(set(steps)) and steps == sorted(steps), steps  # no step twice
    assert sorted(c.epoch for c in ckpts) == [1, 2]  # no epoch twice
    assert any("paused at step" in e.message for e in events)


def _waiter(oai, job_id: str):  # noqa: ANN001, ANN202
    def wait(predicate, what: str, timeout: float = 300):  # noqa: ANN001, ANN202
        deadline = time.monotonic() + timeout
        while True:
            job = oai.fine_tuning.jobs.retrieve(job_id)
            if predicate(job):
                return job
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {job.status}"
            time.sleep(0.2)

    return wait


async def test_a_pause_while_the_child_starts_pauses_and_costs_no_attempt(tiny_api: Api, tiny_settings, s3,
                                                                          tmp_path: Path) -> None:  # noqa: ANN001
    """A pause that reaches the child while it imports torch (a cold child: no warm one) is a clean
    pause: the job ends paused, not retried elsewhere until max_attempts fails it, the attempt is
    not counted, the pause flag is gone, and the resumed job trains to the end."""
    api = tiny_api
    settings = msgspec.structs.replace(tiny_settings, warm_child=False, max_attempts=1)
    job_id = await submit(api, s3)
    runner = start_runner(settings, tmp_path / "runner.log")
    try:
        await api.wait_status(job_id, {"running"}, timeout=60)
        r = await api.client.post(f"/jobs/{job_id}/pause", headers=api.auth())
        assert r.status_code == 200, r.text
        paused = await api.wait_status(job_id, {"paused", "failed", "queued"}, timeout=60)
        evs = await events(api, job_id)
        assert paused["status"] == "paused", (paused, evs[-5:])
        assert not [e for e in evs if e["type"] in ("metrics", "attempt_failed")], evs
        stopped = [e for e in evs if e["type"] == "stopped"]
        assert stopped and stopped[-1]["data"]["trained"] is False, evs[-5:]
        assert paused["attempt"] == 0  # the attempt trained nothing: it does not count
        r = await api.client.post(f"/jobs/{job_id}/resume", headers=api.auth())
        assert r.status_code == 200, r.text
        done = await api.wait_status(job_id, {"succeeded", "failed", "paused"}, timeout=600)
    finally:
        runner.terminate()
        runner.wait(30)
    # max_attempts 1: the run that paused did not use the job's only attempt.
    assert done["status"] == "succeeded", (done, (tmp_path / "runner.log").read_text()[-3000:])
    assert done["attempt"] == 1
