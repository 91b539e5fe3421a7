"""The runner's half of the store on SQLite and on a real Postgres: claims, leases, requeue."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import update

from service.contracts.schema import Status
from service.db.tables import JobRow, utcnow
from service.errors import InvalidTransition, LeaseLost
from service.exports.store import ExportLease, ExportStore
from service.ids import new_id
from service.jobs.store import Lease, Store


async def add_queued(store: Store, n: int) -> list[str]:
    ids = []
    async with store.db.write() as ses:
        for i in range(n):
            row = JobRow(id=new_id("ftjob"), tenant="t", status=Status.queued.value, base_model="tiny",
                         training_file="file-x", validation_file=None, suffix=None, hyperparameters={},
                         metadata_={}, deploy=False, attempt=0,
                         created_at=utcnow() + timedelta(microseconds=i))
            ses.add(row)
            ids.append(row.id)
    return ids


async def test_claim_takes_oldest_and_sets_lease(store: Store) -> None:
    ids = await add_queued(store, 3)
    job = await store.claim("runner-a", 30)
    assert job.id == ids[0] and job.status is Status.running and job.attempt == 1
    assert (await store.claim("runner-b", 30)).id == ids[1]
    assert await store.heartbeat(ids[0], Lease("runner-a", 1), 30)
    assert not await store.heartbeat(ids[0], Lease("runner-b", 1), 30)


async def test_many_concurrent_claimers_never_share_a_job(store: Store) -> None:
    n_jobs, n_claimers = 40, 16 if not store.db.is_sqlite else 8
    await add_queued(store, n_jobs)
    claimed: list[str] = []

    async def claimer(i: int) -> None:
        while (job := await store.claim(f"r{i}", 30)) is not None:
            claimed.append(job.id)

    await asyncio.gather(*(claimer(i) for i in range(n_claimers)))
    assert len(claimed) == n_jobs and len(set(claimed)) == n_jobs


async def test_expired_lease_goes_back_to_queued_then_fails_after_max_attempts(store: Store) -> None:
    [job_id] = await add_queued(store, 1)
    for attempt in (1, 2):
        job = await store.claim("r", 30)
        assert job.attempt == attempt
        async with store.db.write() as ses:
            await ses.execute(update(JobRow).where(JobRow.id == job_id)
                              .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        assert await store.requeue_expired(max_attempts=2) == [job_id]
        status = (await store.get_job(None, job_id)).status
        assert status is (Status.queued if attempt == 1 else Status.failed)
    failed = await store.get_job(None, job_id)
    assert failed.error.code == "max_attempts_exceeded"
    assert await store.claim("r", 30) is None


async def test_cancel_wins_over_a_late_heartbeat_and_finish(store: Store) -> None:
    [job_id] = await add_queued(store, 1)
    await store.claim("r", 30)
    await store.cancel_job("t", job_id)
    assert not await store.heartbeat(job_id, Lease("r", 1), 30)
    with pytest.raises(InvalidTransition):
        await store.set_status(job_id, Status.succeeded, "done", lease=Lease("r", 1))
    assert (await store.get_job(None, job_id)).status is Status.cancelled


async def test_checkpoints_are_recorded_once_per_epoch(store: Store) -> None:
    [job_id] = await add_queued(store, 1)
    first = await store.record_checkpoint(job_id, 1, 10, "s3://b/k/epoch-1/", {"train_loss": 1.0})
    assert first is not None and first.id.startswith("ftckpt-")
    assert await store.record_checkpoint(job_id, 1, 10, "s3://b/k/epoch-1/", {}) is None
    assert [c.epoch for c in await store.list_checkpoints(None, job_id)] == [1]


async def test_a_runner_frozen_past_its_lease_has_every_write_refused(store: Store) -> None:
    """Fencing: once the lease expired and the job went to another attempt, the first runner's
    heartbeat, progress, events, checkpoints and final status are all refused."""
    [job_id] = await add_queued(store, 1)
    await store.claim("frozen", 30)
    stale = Lease("frozen", 1)
    async with store.db.write() as ses:
        await ses.execute(update(JobRow).where(JobRow.id == job_id)
                          .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert not await store.heartbeat(job_id, stale, 30)  # expired: not extended, even unswept
    assert await store.requeue_expired(max_attempts=3) == [job_id]
    assert (await store.claim("fresh", 30)).attempt == 2
    with pytest.raises(LeaseLost):
        await store.update_job(job_id, lease=stale, progress={"step": 99})
    with pytest.raises(LeaseLost):
        await store.add_event(job_id, "metrics", "late", lease=stale)
    with pytest.raises(LeaseLost):
        await store.record_checkpoint(job_id, 1, 10, "s3://b/k/epoch-1/", {}, lease=stale)
    with pytest.raises(InvalidTransition):
        await store.set_status(job_id, Status.succeeded, "done", lease=stale)
    fresh = Lease("fresh", 2)
    assert await store.heartbeat(job_id, fresh, 30)
    assert await store.record_checkpoint(job_id, 1, 10, "s3://b/k/epoch-1/", {}, lease=fresh)
    job = await store.get_job(None, job_id)
    assert job.status is Status.running and job.progress is None


async def add_succeeded_job_with_exports(store: Store, n: int) -> tuple[str, list[str]]:
    """A succeeded job and `n` queued exports of it (each format at most once per checkpoint)."""
    from service.contracts.schema import ExportFormat

    exports = ExportStore(store.db)
    [job_id] = await add_queued(store, 1)
    async with store.db.write() as ses:
        await ses.execute(update(JobRow).where(JobRow.id == job_id).values(status=Status.succeeded.value))
    ids = []
    for i in range(n):
        export, created = await exports.create_export("t", job_id, "ft:tiny::x", list(ExportFormat)[i % 4],
                                                    i // 4 + 1 if i >= 4 else None)
        assert created
        ids.append(export.id)
    return job_id, ids


async def test_exports_claim_once_heartbeat_and_requeue_like_jobs(store: Store) -> None:
    from service.contracts.schema import ExportFormat, ExportStatus

    exports = ExportStore(store.db)
    job_id, ids = await add_succeeded_job_with_exports(store, 6)
    # Asking for the same export again gives the one queued; a failed one does not count.
    again, created = await exports.create_export("t", job_id, "ft:tiny::x", ExportFormat.merged_16bit, None)
    assert not created and again.id == ids[0]
    claimed: list[str] = []

    async def claimer(i: int) -> None:
        while (found := await exports.claim_export(f"r{i}", 30)) is not None:
            claimed.append(found.id)

    await asyncio.gather(*(claimer(i) for i in range(4)))
    assert sorted(claimed) == sorted(ids)
    first = await exports.get_export("t", ids[0])
    lease = ExportLease(await _owner(store, ids[0]), 1)
    assert first.status is ExportStatus.running and first.attempt == 1
    assert await exports.heartbeat_export(ids[0], lease, 30)
    assert not await exports.heartbeat_export(ids[0], ExportLease("someone-else", 1), 30)
    # A lapsed lease: back to the queue, and the old holder's writes are refused.
    from service.exports.rows import ExportRow

    async with store.db.write() as ses:
        await ses.execute(update(ExportRow).where(ExportRow.id == ids[0])
                          .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert await exports.requeue_expired_exports(max_attempts=3) == [ids[0]]
    with pytest.raises(LeaseLost):
        await exports.export_stage(ids[0], lease, "merging")
    again = await exports.claim_export("r9", 30)
    assert again is not None and again.id == ids[0] and again.attempt == 2
    from service.errors import NotFound

    with pytest.raises(NotFound):  # another tenant's export does not exist for it
        await exports.get_export("other", ids[0])


async def _owner(store: Store, export_id: str) -> str:
    from service.exports.rows import ExportRow

    async with store.db.read() as ses:
        return (await ses.get(ExportRow, export_id)).lease_owner
