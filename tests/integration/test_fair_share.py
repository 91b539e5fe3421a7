"""Runners shared fairly between tenants (issue 32 part 2), on SQLite and a real Postgres: the claim
order with several tenants' queues, priorities within a tenant, the per-tenant limit, and
concurrent claimers never pushing a tenant over it. Slots stand in for GPUs: a claimed job holds one
until it is finished here."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import update

from service.contracts.schema import Status
from service.db.tables import JobRow, utcnow
from service.ids import new_id
from service.jobs.store import Store


async def submit(store: Store, tenant: str, n: int, *, priority: int = 0) -> list[str]:
    """n queued jobs of `tenant`, each created after every job before it."""
    ids = []
    async with store.db.write() as ses:
        for _ in range(n):
            row = JobRow(id=new_id("ftjob"), tenant=tenant, status=Status.queued.value, base_model="tiny",
                         training_file="file-x", validation_file=None, suffix=None, hyperparameters={},
                         metadata_={}, deploy=False, attempt=0, priority=priority,
                         created_at=utcnow() + timedelta(microseconds=len(ids)))
            ses.add(row)
            ids.append(row.id)
    await asyncio.sleep(0.002)  # the next submission is strictly later, also on a coarse clock
    return ids


async def finish(store: Store, job_id: str) -> None:
    async with store.db.write() as ses:
        await ses.execute(update(JobRow).where(JobRow.id == job_id)
                          .values(status=Status.succeeded.value, lease_owner=None))


async def run_queue(store: Store, slots: int, limit: int | None = None) -> list[tuple[str, str]]:
    """Fill the slots, then finish the oldest running job and claim again, until the queue is
    empty: the (tenant, job id) claim order."""
    order: list[tuple[str, str]] = []
    running: list[str] = []
    tenants: dict[str, str] = {}
    while True:
        while len(running) < slots and (job := await store.claim("runner", 60, limit)) is not None:
            async with store.db.read() as ses:
                tenants[job.id] = (await ses.get(JobRow, job.id)).tenant
            order.append((tenants[job.id], job.id))
            running.append(job.id)
        if not running:
            return order
        await finish(store, running.pop(0))


async def test_a_burst_from_one_tenant_does_not_starve_the_others(store: Store) -> None:
    a = await submit(store, "acme", 6)  # acme's burst comes first
    b = await submit(store, "bolt", 3)
    c = await submit(store, "cosa", 1)
    order = await run_queue(store, slots=2)
    tenants = [t for t, _ in order]
    # Each tenant's first job starts within the first round (3 tenants: the first 3 claims), though
    # acme queued 6 before either other tenant queued one; plain FIFO would start cosa 10th.
    assert set(tenants[:3]) == {"acme", "bolt", "cosa"}, tenants
    # While all three have work, no tenant runs two jobs ahead of another's turn: bolt's 3 jobs
    # all start before acme's 4th.
    assert tenants.index("cosa") == 2
    assert max(i for i, t in enumerate(tenants) if t == "bolt") < [i for i, t in enumerate(tenants)
                                                                  if t == "acme"][3]
    # within a tenant: first in, first out
    assert [j for t, j in order if t == "acme"] == a
    assert [j for t, j in order if t == "bolt"] == b
    assert [j for t, j in order if t == "cosa"] == c


async def test_priority_orders_a_tenants_own_jobs_only(store: Store) -> None:
    a = await submit(store, "acme", 3)
    b = await submit(store, "bolt", 2)
    urgent = await submit(store, "acme", 1, priority=10)  # newest, and first among acme's
    order = await run_queue(store, slots=1)
    assert [j for t, j in order if t == "acme"] == urgent + a
    # bolt is not pushed back by acme's priority: its job, queued before acme's urgent one, goes
    # first, and then the two take turns
    assert [t for t, _ in order][:4] == ["bolt", "acme", "bolt", "acme"]
    assert [j for t, j in order if t == "bolt"] == b


async def test_a_tenant_at_its_limit_waits_while_the_others_run(store: Store) -> None:
    await submit(store, "acme", 4)
    b = await submit(store, "bolt", 1)
    first = await store.claim("r1", 60, tenant_limit=1)
    assert first is not None
    second = await store.claim("r2", 60, tenant_limit=1)
    assert second is not None and second.id == b[0]  # acme is at its limit of 1
    assert await store.claim("r3", 60, tenant_limit=1) is None  # a free slot stays free
    await finish(store, first.id)
    assert (await store.claim("r3", 60, tenant_limit=1)) is not None  # acme's next, once one ended


async def test_concurrent_claimers_never_push_a_tenant_over_its_limit(store: Store) -> None:
    await submit(store, "acme", 12)
    await submit(store, "bolt", 2)
    claimed: list[str] = []

    async def claimer(i: int) -> None:
        while (job := await store.claim(f"r{i}", 60, tenant_limit=3)) is not None:
            claimed.append(job.id)

    await asyncio.gather(*(claimer(i) for i in range(8 if not store.db.is_sqlite else 4)))
    async with store.db.read() as ses:
        rows = [await ses.get(JobRow, j) for j in claimed]
    by_tenant = {t: sum(r.tenant == t for r in rows) for t in ("acme", "bolt")}
    assert by_tenant == {"acme": 3, "bolt": 2}, by_tenant
    assert len(set(claimed)) == len(claimed)


async def test_a_tenant_at_its_gpu_limit_waits_and_the_next_tenant_goes(store: Store) -> None:
    """tenant_max_gpus counts the devices running jobs hold (a job on 2 GPUs counts 2)."""
    async def job(tenant: str, gpus: int) -> str:
        async with store.db.write() as ses:
            row = JobRow(id=new_id("ftjob"), tenant=tenant, status=Status.queued.value, base_model="tiny",
                         training_file="file-x", validation_file=None, suffix=None, hyperparameters={},
                         metadata_={}, deploy=False, attempt=0, gpus=str(gpus))
            ses.add(row)
        await asyncio.sleep(0.002)
        return row.id

    big, small = await job("acme", 2), await job("acme", 1)
    other = await job("bolt", 1)

    def fits(candidate) -> int:  # noqa: ANN001 - a runner with room for anything
        return int(candidate.gpus)

    async def claim():  # noqa: ANN202
        found = await store.claim("runner", 60, None, fits=fits, tenant_gpu_limit=2)
        return found.id if found else None

    assert await claim() == big  # acme: 2 of its 2 GPUs
    assert await claim() == other
    assert await claim() is None  # acme's next would make 3; no other tenant is waiting
    await finish(store, big)
    assert await claim() == small
    # Without the GPU limit, the running-jobs count alone would have let acme's second job in.
    async with store.db.read() as ses:
        assert (await ses.get(JobRow, big)).devices == 2
