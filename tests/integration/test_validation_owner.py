"""Validation has one owner: two API replicas that start beside a job still validating (after a
restart, say) validate its file once, not once each; a replica that died holding the lease is
taken over once the lease runs out. Real app services, a real database and a real S3 server
(through a loopback proxy that counts the S3 calls)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import update

from service.contracts.schema import Status
from service.db.engine import Database, migrate
from service.db.tables import JobRow, utcnow
from service.ids import new_id
from service.jobs.service import JobService
from service.jobs.store import Store
from service.storage import make_store
from tests.conftest import DATASETS
from tests.support.data import chat_rows, jsonl
from tests.support.s3_faults import s3_fault_proxy


async def test_two_replicas_validate_a_pending_file_once(make_settings, s3, s3_endpoint: str) -> None:  # noqa: ANN001
    s3.put_object(Bucket=DATASETS, Key="owner/train.jsonl", Body=jsonl(chat_rows(60)))
    with s3_fault_proxy(s3_endpoint) as (proxy, faults):
        settings = make_settings(s3_endpoint_url=proxy)
        await asyncio.to_thread(migrate, settings.database_url)
        dbs = [Database(settings.database_url) for _ in range(2)]
        replicas = [JobService(settings, Store(db), make_store(settings)) for db in dbs]
        ids = []
        async with dbs[0].write() as ses:
            for _ in range(2):
                ids.append(new_id("ftjob"))
                ses.add(JobRow(id=ids[-1], tenant="acme", status=Status.validating_files.value,
                               base_model="tiny", training_file=f"s3://{DATASETS}/owner/train.jsonl",
                               validation_file=None, suffix=None, hyperparameters={}, metadata_={},
                               deploy=False, attempt=0, method={"type": "supervised"}))
            # The second job's validator died mid-way: its lease ran out a while ago.
        async with dbs[0].write() as ses:
            await ses.execute(update(JobRow).where(JobRow.id == ids[1]).values(
                lease_owner="api-dead", lease_expires_at=utcnow() - timedelta(seconds=5)))
        faults.reset()
        await asyncio.gather(*(r.resume_pending() for r in replicas))
        await asyncio.gather(*(t for r in replicas for t in list(r._tasks)))
        jobs = [await replicas[0].store.get_job(None, i) for i in ids]
        calls = faults.calls
        for db in dbs:
            await db.close()
    assert [j.status for j in jobs] == [Status.queued, Status.queued], jobs
    assert calls == 2, f"{calls} S3 reads for 2 files: a file was validated more than once"
