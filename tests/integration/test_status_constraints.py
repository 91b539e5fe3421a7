"""Statuses are enforced by the database itself (migration 0010: CHECK constraints on Postgres,
triggers on SQLite), so no writer that skips the state table (a script, a bad migration) can
store a status the service does not know. The allowed values are the enums' own: a new status
without a migration that allows it fails here."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError, IntegrityError

from service.contracts.schema import DeploymentStatus, ExportStatus, Status
from service.db.tables import JobRow
from service.exports.rows import ExportRow
from service.ids import new_id
from service.jobs.store import Store
from tests.integration.test_store_leases import add_queued

TABLES = {"jobs": Status, "deployments": DeploymentStatus, "deployment_replicas": DeploymentStatus,
          "exports": ExportStatus}



async def _allowed(store: Store, table: str) -> set[str]:
    """The values the database allows in `table.status`, read from its own schema."""
    if store.db.is_sqlite:
        sql = "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?"
    else:
        sql = ("SELECT pg_get_constraintdef(oid) AS sql FROM pg_constraint "
               "WHERE conrelid = CAST(? AS regclass) AND contype = 'c'")
    rows = await store.db.rows(sql, table)
    # SQLite: "... WHEN NEW.status NOT IN ('a', 'b') ..."; Postgres: "CHECK (status = ANY (ARRAY['a', ...]))"
    lists = [re.search(r"IN \((.*?)\)|ARRAY\[(.*?)\]", r["sql"], re.S) for r in rows if "status" in r["sql"]]
    found = [set(re.findall(r"'([a-z_]+)'", m.group(1) or m.group(2))) for m in lists if m]
    assert found, f"{table}.status has no constraint"
    assert all(f == found[0] for f in found), found  # the insert and update triggers agree
    return found[0]


async def test_the_database_allows_exactly_each_enums_statuses(store: Store) -> None:
    for table, enum in TABLES.items():
        assert await _allowed(store, table) == {s.value for s in enum}, table


async def test_a_status_outside_the_enum_is_refused_by_the_database(store: Store) -> None:
    [job_id] = await add_queued(store, 1)
    for status in Status:  # every real one is taken
        async with store.db.write() as ses:
            await ses.execute(update(JobRow).where(JobRow.id == job_id).values(status=status.value))
    with pytest.raises((IntegrityError, DBAPIError)):
        async with store.db.write() as ses:
            await ses.execute(update(JobRow).where(JobRow.id == job_id).values(status="sleeping"))
    # An export row: each real status is stored, an unknown one refused on insert.
    for status in (*ExportStatus, "nope"):
        row = ExportRow(id=new_id("export"), tenant="t", job_id=job_id, model="tiny", format="gguf_f16",
                        status=status)
        if status == "nope":
            with pytest.raises((IntegrityError, DBAPIError)):
                async with store.db.write() as ses:
                    ses.add(row)
        else:
            async with store.db.write() as ses:
                ses.add(row)
    assert (await store.get_job(None, job_id)).status is Status.cancelled
