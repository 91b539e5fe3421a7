"""Fixtures the integration tests share."""

from __future__ import annotations

import asyncio

import pytest

from service.db.engine import Database, migrate
from service.jobs.store import Store


@pytest.fixture
async def store(database_url: str):  # noqa: ANN201
    """The store over a migrated, empty database on each backend (SQLite, Postgres)."""
    await asyncio.to_thread(migrate, database_url)
    db = Database(database_url)
    yield Store(db)
    await db.close()
