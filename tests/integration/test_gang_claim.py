"""The gang claim (issue 34): a job that asks for N GPUs takes N empty devices of one runner at
once, or none. Two runners (three devices and two) on one database, every lane of every device
claiming concurrently through the runner's own claim step, over a queue of 1-, 2- and 3-device
jobs and one that no runner can hold: after every claim, the job holds exactly its devices, all
of one runner, none shared with another job; the job too large for any runner never holds the
queue; and every other job runs. CPU devices stand in for GPUs; no training starts."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from service.contracts.schema import Status
from service.db.tables import JobRow, utcnow
from service.ids import new_id
from service.jobs.store import Store
from service.runner.loop import Runner
from service.runner.placement import Device
from service.settings import BaseModelEntry, Settings


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2).to_json_file(tmp_path / "config.json")
    return tmp_path


async def _submit(store: Store, gpus: list[int | str]) -> dict[str, int]:
    """A queued job per entry of `gpus`, oldest first; {job id: devices asked}."""
    asked = {}
    async with store.db.write() as ses:
        for i, n in enumerate(gpus):
            row = JobRow(id=new_id("ftjob"), tenant=f"t{i % 3}", status=Status.queued.value, base_model="m",
                         training_file="file-x", validation_file=None, suffix=None,
                         hyperparameters={"batch_size": 12, "max_seq_length": 64}, metadata_={},
                         deploy=False, attempt=0, gpus=str(n), created_at=utcnow() + timedelta(microseconds=i))
            ses.add(row)
            asked[row.id] = n
    return asked


async def test_concurrent_lanes_never_leave_a_job_holding_part_of_its_devices(store: Store, model_dir: Path) -> None:
    settings = Settings(base_models=(BaseModelEntry(alias="m", source=str(model_dir)),), poll_seconds=0.01,
                        runner_jobs_per_gpu=2)  # two lanes per device: more claimers than devices
    rng = random.Random(7)
    sizes = [rng.choice([1, 1, 2, 3]) for _ in range(40)]
    asked = await _submit(store, [*sizes[:5], 4, *sizes[5:]])  # 4: more than any runner has
    too_big = next(j for j, n in asked.items() if n == 4)
    runners = []
    for name, count in (("a", 3), ("b", 2)):
        runner = Runner(settings, store, where=None)  # type: ignore[arg-type] - no job is run
        runner.id = name
        lock = asyncio.Lock()
        runner.devices = [Device(settings, None, lock, index=i, cpu_devices=count) for i in range(count)]
        runners.append(runner)
    ran: dict[str, list[str]] = {}
    problems: list[str] = []

    async def lane(runner: Runner, device: Device, lane: int) -> None:
        while True:
            job = await runner._next_job(f"{runner.id}/{device.label}#{lane}", device, exports=False)
            if job is None:
                if len(ran) == len(asked) - 1:
                    return
                continue
            choice = runner.choices.pop(job.id)
            held = [d for r in runners for d in r.devices if job.id in d.held]
            mine = [d.label for d in choice.devices]
            if sorted(d.label for d in held) != sorted(mine) or any(d not in runner.devices for d in held):
                problems.append(f"{job.id} holds {[d.label for d in held]}, chose {mine} on {runner.id}")
            if len(choice.devices) != asked[job.id] or choice.devices[0] is not device:
                problems.append(f"{job.id} asked {asked[job.id]}, got {mine} from lane {device.label}")
            if any(len(d.held) > 1 for d in held if d.exclusive or len(choice.devices) > 1):
                problems.append(f"{job.id} shares a device: {[list(d.held) for d in held]}")
            ran[job.id] = [f"{runner.id}/{label}" for label in mine]
            await asyncio.sleep(rng.uniform(0, 0.03))  # "training"
            for d in choice.devices:
                d.release(job.id)
            async with store.db.write() as ses:
                await ses.execute(update(JobRow).where(JobRow.id == job.id)
                                  .values(status=Status.succeeded.value, lease_owner=None))

    await asyncio.wait_for(asyncio.gather(*(lane(r, d, i) for r in runners for d in r.devices
                                            for i in range(d.lanes))), 120)
    assert not problems, problems
    assert set(ran) == set(asked) - {too_big}
    # The 3-device jobs ran on runner a, the only one with three; the others on both.
    assert all(devices[0].startswith("a/") for j, devices in ran.items() if asked[j] == 3)
    assert {devices[0][0] for j, devices in ran.items() if asked[j] < 3} == {"a", "b"}
    async with store.db.read() as ses:
        assert (await ses.get(JobRow, too_big)).status == Status.queued.value
