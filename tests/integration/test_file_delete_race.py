"""Deleting a file and creating a job that reads it, at the same moment: either the job is
created and the delete is refused (409), or the file is gone and the job is refused (404); never
a job that reads a deleted file. Both databases; on Postgres each side on its own engine, as two
API replicas would be."""

from __future__ import annotations

import asyncio

from service.contracts.schema import Status
from service.db.engine import Database, migrate
from service.db.tables import FileRow, JobRow
from service.errors import Conflict, NotFound
from service.files.service import FileService
from service.ids import new_id
from service.jobs.store import Store
from service.storage import make_store

ROUNDS = 25


async def test_a_file_deleted_while_a_job_is_created_never_leaves_the_job_reading_nothing(
        make_settings, database_url: str) -> None:  # noqa: ANN001
    settings = make_settings(database_url=database_url)
    await asyncio.to_thread(migrate, database_url)
    creating, deleting = Database(database_url), Database(database_url)
    files = FileService(settings, Store(deleting), make_store(settings))
    outcomes = []
    for _ in range(ROUNDS):
        file_id = new_id("file")
        async with creating.write() as ses:
            ses.add(FileRow(id=file_id, tenant="acme", filename="a.jsonl", bytes=1, bucket=settings.artifact_bucket,
                            key=f"files/{file_id}.jsonl", sha256="0" * 64))
        job = JobRow(id=new_id("ftjob"), tenant="acme", status=Status.validating_files.value, base_model="tiny",
                     training_file=file_id, validation_file=None, suffix=None, hyperparameters={},
                     metadata_={}, deploy=False, attempt=0)

        async def create() -> str:
            try:
                await Store(creating).create_job(job, None, "h")
            except NotFound:
                return "refused"
            return "created"

        async def delete() -> str:
            try:
                await files.delete("acme", file_id)
            except Conflict:
                return "refused"
            return "deleted"

        made, gone = await asyncio.gather(create(), delete())
        outcomes.append((made, gone))
    await creating.close()
    await deleting.close()
    assert ("created", "deleted") not in outcomes, outcomes
    assert all(o in {("created", "refused"), ("refused", "deleted")} for o in outcomes), outcomes
