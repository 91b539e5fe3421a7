"""A follower of a job's events never misses one on Postgres, with several writers at once.

Events are paged by a sequence taken at insert and seen at commit. Without care a writer that
took seq 50 and commits late is passed by a follower that already read seq 51 from a writer that
committed first. Every event insert therefore locks its job's row first (service/db/engine.py),
so for one job the sequence is handed out in commit order."""

from __future__ import annotations

import asyncio
import random

from service.contracts.schema import Status
from service.db.engine import Database, migrate
from service.db.tables import JobRow
from service.ids import new_id
from service.jobs.rows import event_row
from service.jobs.store import Store
from tests.conftest import new_postgres_database

WRITERS, EVENTS_EACH = 6, 40


async def test_a_follower_sees_every_event_exactly_once_under_concurrent_writers(postgres_url: str) -> None:
    url = await new_postgres_database(postgres_url)
    await asyncio.to_thread(migrate, url)
    dbs = [Database(url) for _ in range(WRITERS + 1)]  # one engine per writer: separate processes' worth
    follower_store = Store(dbs[-1])
    job_id = new_id("ftjob")
    async with dbs[0].write() as ses:
        ses.add(JobRow(id=job_id, tenant="t", status=Status.running.value, base_model="tiny",
                       training_file="file-x", validation_file=None, suffix=None, hyperparameters={},
                       metadata_={}, deploy=False, attempt=1))
    rng = random.Random(7)
    done = asyncio.Event()

    async def writer(w: int) -> None:
        store = Store(dbs[w])
        for i in range(EVENTS_EACH):
            if i % 2:  # the store's own path
                await store.add_event(job_id, "metrics", f"{w}/{i}")
                continue
            # A transaction that inserts its event, then commits a moment later (a slow disk,
            # a scheduler pause): the window in which a follower could pass it.
            async with store.db.write() as ses:
                ses.add(event_row(job_id, "metrics", f"{w}/{i}"))
                await ses.flush()
                await asyncio.sleep(rng.uniform(0, 0.02))

    async def follower() -> list[str]:
        seen, after = [], None
        while True:
            finished = done.is_set()
            page = await follower_store.list_events(None, job_id, after, 7)
            seen += [e.message for e in page.data]
            after = page.last_id or after
            if finished and not page.has_more and not page.data:
                return seen
            if not page.has_more:
                await asyncio.sleep(0.001)

    follow = asyncio.create_task(follower())
    await asyncio.gather(*(writer(w) for w in range(WRITERS)))
    done.set()
    seen = await follow
    for db in dbs:
        await db.close()
    expected = {f"{w}/{i}" for w in range(WRITERS) for i in range(EVENTS_EACH)}
    assert len(seen) == len(set(seen)), "an event was delivered twice"
    missed = expected - set(seen)
    assert not missed, f"the follower missed {len(missed)} of {len(expected)} events for good"
    assert len(seen) == WRITERS * EVENTS_EACH == 240
