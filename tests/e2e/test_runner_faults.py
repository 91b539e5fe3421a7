"""A runner whose writes fail: the job is never left `running` forever and the runner never
stops. The faults are real exceptions out of the real store (a write that fails once), injected
by a Store subclass, with a real runner, real training children and a real database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from sqlalchemy.exc import OperationalError

from service.contracts import schema as s
from service.db.engine import Database
from service.errors import LeaseLost
from service.jobs.locate import Locator
from service.jobs.store import Store
from service.runner.loop import Runner
from service.storage import make_store
from tests.conftest import Api
from tests.e2e.test_resume import submit, tiny_api, tiny_settings  # noqa: F401 - fixtures
from tests.e2e.test_training_runner import events
from tests.support.processes import settings_env

pytestmark = pytest.mark.slow


class FailingOnce(Store):
    """The first metrics event of the job fails as a database blip would; the first success
    fails as a lease lost at that moment would."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.blipped = self.fenced = False

    async def add_event(self, job_id, type_, message, level="info", data=None, *, lease=None):  # noqa: ANN001, ANN201
        if type_ == "metrics" and not self.blipped:
            self.blipped = True
            raise OperationalError("INSERT INTO events", {}, Exception("database is locked"))
        return await super().add_event(job_id, type_, message, level, data, lease=lease)

    async def set_status(self, job_id, to, message, **kw):  # noqa: ANN001, ANN003, ANN201
        if to is s.Status.succeeded and not self.fenced:
            self.fenced = True
            raise LeaseLost(f"job {job_id} is no longer leased")
        return await super().set_status(job_id, to, message, **kw)


async def test_a_write_that_fails_hands_the_job_back_and_the_runner_keeps_going(
        tiny_api: Api, tiny_settings, s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001, F811
    settings = msgspec.structs.replace(tiny_settings, warm_child=False, max_attempts=5)
    # The runner runs in this process; its training children read the settings from the
    # environment, as they do under `python -m service runner`.
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    job_id = await submit(tiny_api, s3)
    db = Database(settings.database_url)
    store = FailingOnce(db)
    runner = Runner(settings, store, Locator(settings, store, make_store(settings)))
    task = asyncio.create_task(runner.run())
    try:
        done = await tiny_api.wait_status(job_id, {"succeeded", "failed", "cancelled"}, timeout=600)
        assert not task.done(), task.exception()  # nothing but a fatal error stops a runner
    finally:
        runner.stopping.set()
        await asyncio.wait_for(task, 60)
        await db.close()
    evs = await events(tiny_api, job_id)
    assert done["status"] == "succeeded", [e["message"] for e in evs[-8:]]
    assert store.blipped and store.fenced
    statuses = [e["data"]["status"] for e in evs if e["type"] == "status"]
    # attempt 1: its metrics event failed, so it was stopped and handed back at once; attempt 2:
    # its success could not be written, so its lease ran out; attempt 3 finished.
    assert statuses == ["validating_files", "queued", "running", "queued", "running", "queued",
                        "running", "succeeded"], statuses
    assert done["attempt"] == 3
    # Each attempt's folder is emptied when it ends (the data copy, the Trainer's saves): logs stay.
    runs = Path(settings.data_dir).resolve() / "runs" / job_id
    assert sorted(p.name for p in runs.iterdir()) == ["attempt-1", "attempt-2", "attempt-3"]
    left = [str(p.relative_to(runs)) for p in runs.rglob("*") if p.is_file() and p.suffix != ".log"]
    assert not left, left
