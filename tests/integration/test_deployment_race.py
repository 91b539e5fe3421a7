"""Several serving replicas of one base report the same deployment (Postgres, one engine each, as
separate sidecars' API processes would be). Each replica keeps its own state, so none is refused
for another's move: all of them load the adapter, the deployment's own status follows the best of
them (loaded when one serves it), one event per change of that status, and the gateway sends the
model to a replica that has it loaded.

Before per-replica state, five of six replicas got a 409 for `loading` and aborted their pass."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from service.api.gateway import pick_upstream
from service.contracts.schema import Status
from service.db.engine import Database, migrate
from service.db.tables import EventRow, JobRow
from service.deployments.service import Deployments, deployment_request
from service.errors import InvalidTransition
from service.ids import new_id
from service.jobs.store import Store
from tests.conftest import new_postgres_database

REPLICAS, ROUNDS = 6, 10
URLS = tuple(f"http://vllm-{i}:8000/v1" for i in range(REPLICAS))


async def _job(db: Database) -> str:
    job_id = new_id("ftjob")
    async with db.write() as ses:
        ses.add(JobRow(id=job_id, tenant="t", status=Status.succeeded.value, base_model="tiny",
                       training_file="file-x", validation_file=None, suffix=None, hyperparameters={},
                       metadata_={}, deploy=True, attempt=1))
    return job_id


async def _request(db: Database, job_id: str, name: str) -> None:
    job = await Store(db).get_job(None, job_id)
    await Deployments(db).request(deployment_request(job, "t", name, "b", "p", kind="checkpoint",
                                                     folder=name))


async def _said(db: Database, job_id: str) -> list[str]:
    async with db.read() as ses:
        return list((await ses.scalars(select(EventRow.message).where(
            EventRow.job_id == job_id, EventRow.type == "deployment").order_by(EventRow.seq))).all())


async def test_every_replica_loads_a_deployment_without_a_conflict(postgres_url: str) -> None:
    url = await new_postgres_database(postgres_url)
    await asyncio.to_thread(migrate, url)
    dbs = [Database(url) for _ in range(REPLICAS)]
    job_id = await _job(dbs[0])
    names = [f"ft:tiny:r{i}:{job_id}" for i in range(ROUNDS)]
    for name in names:
        await _request(dbs[0], job_id, name)
    await asyncio.gather(*(db.ping() for db in dbs))  # connected, so the replicas start together

    async def report(db: Database, replica: str, name: str, status: str) -> bool:
        try:
            await Deployments(db).mark(name, status, replica=replica)
        except InvalidTransition:
            return False
        return True

    for status in ("loading", "loaded"):
        accepted = [sum(await asyncio.gather(*(report(db, u, name, status) for db, u in zip(dbs, URLS))))
                    for name in names]
        assert accepted == [REPLICAS] * ROUNDS, (status, accepted)
    deployments = Deployments(dbs[0])
    for name in names:
        assert await deployments.loaded_on(name) == set(URLS)
    said = await _said(dbs[0], job_id)
    for db in dbs:
        await db.close()
    expected = [m for n in names for m in (f"deployment of {n} requested", f"{n} is loading", f"{n} is loaded")]
    assert sorted(said) == sorted(expected), said


async def test_the_deployment_follows_its_best_replica(database_url: str) -> None:
    await asyncio.to_thread(migrate, database_url)
    db = Database(database_url)
    try:
        await _follow_the_best_replica(db)
    finally:
        await db.close()


async def _follow_the_best_replica(db: Database) -> None:
    job_id = await _job(db)
    name = f"ft:tiny:x:{job_id}"
    await _request(db, job_id, name)
    d = Deployments(db)
    a, b = URLS[0], URLS[1]
    await d.mark(name, "loading", replica=a)
    await d.mark(name, "failed", replica=a, error="no room")
    # One replica failed, another has not reported: the deployment failed, and says why.
    [row] = await d.rows()
    assert (row.status, row.error) == ("failed", "no room")
    # Another replica loads it: the model is served after all; a later failure elsewhere keeps it.
    await d.mark(name, "loaded", replica=b)
    await d.mark(name, "failed", replica=URLS[2], error="out of memory")
    [row] = await d.rows()
    assert (row.status, row.error) == ("loaded", None)
    assert await d.loaded_on(name) == {b}
    # Each replica reads its own state: a fresh replica has none (so it loads the adapter too).
    states = {spec.name: spec.replica_status for spec in await d.specs(replica=a)}
    assert states == {name: "failed"}
    assert [spec.replica_status for spec in await d.specs(replica=URLS[5])] == [None]
    # The gateway sends the model to the replica that has it loaded, whatever the hash says.
    assert pick_upstream(URLS, name, await d.loaded_on(name)) == b
    assert pick_upstream(URLS, name, set()) == pick_upstream(URLS, name)
    # Unloaded at the user's request: a replica's late load is refused and changes nothing.
    await d.unload("t", name)
    with pytest.raises(InvalidTransition):
        await d.mark(name, "loaded", replica=URLS[3])
    assert [r.status for r in await d.rows()] == ["unloaded"]
    assert await d.loaded_on(name) == set()
    # Asked for again: every replica starts afresh.
    await _request(db, job_id, name)
    assert [spec.replica_status for spec in await d.specs(replica=b)] == [None]
    await d.mark(name, "loaded", replica=b)
    assert [r.status for r in await d.rows()] == ["loaded"]
