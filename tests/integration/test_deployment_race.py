"""Several serving replicas report the same deployment at once (Postgres, one engine each, as
separate sidecars' API processes would be): the guarded transition lets exactly one move it
pending -> loading; the others get InvalidTransition (409), and one event is written."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from service.errors import InvalidTransition
from service.ids import new_id
from service.jobs.database import Database, migrate
from service.jobs.db import EventRow, JobRow
from service.jobs.deployments import Deployments, deployment_request
from service.jobs.schema import Status
from service.jobs.store import Store
from tests.conftest import new_postgres_database

REPLICAS, ROUNDS = 6, 10


async def test_one_replica_of_many_takes_a_pending_deployment(postgres_url: str) -> None:
    url = await new_postgres_database(postgres_url)
    await asyncio.to_thread(migrate, url)
    dbs = [Database(url) for _ in range(REPLICAS)]
    job_id = new_id("ftjob")
    async with dbs[0].write() as ses:
        ses.add(JobRow(id=job_id, tenant="t", status=Status.succeeded.value, base_model="tiny",
                       training_file="file-x", validation_file=None, suffix=None, hyperparameters={},
                       metadata_={}, deploy=True, attempt=1))
    job = await Store(dbs[0]).get_job(None, job_id)
    names = [f"ft:tiny:r{i}:{job_id}" for i in range(ROUNDS)]
    for name in names:
        await Deployments(dbs[0]).request(deployment_request(job, "t", name, "b", "p", kind="checkpoint",
                                                             folder=name))
    await asyncio.gather(*(db.ping() for db in dbs))  # connected, so the replicas start together

    async def report(db: Database, name: str) -> bool:
        try:
            await Deployments(db).mark(name, "loading")
        except InvalidTransition:
            return False
        return True

    winners = [sum(await asyncio.gather(*(report(db, name) for db in dbs))) for name in names]
    async with dbs[0].read() as ses:
        said = (await ses.scalars(select(EventRow.message).where(EventRow.job_id == job_id,
                                                                 EventRow.type == "deployment"))).all()
    for db in dbs:
        await db.close()
    assert winners == [1] * ROUNDS, winners
    assert sorted(said) == sorted([f"deployment of {n} requested" for n in names]
                                  + [f"{n} is loading" for n in names]), said
