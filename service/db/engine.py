"""The database engine: SQLite (embedded default) or Postgres, sessions, and Alembic migrations."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

from service.db.tables import EventRow

_PG_READERS = 10  # connections for `Database.rows` on Postgres, per process
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def as_utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if dt is None or dt.tzinfo is not None:
        return dt
    return dt.replace(tzinfo=timezone.utc)


def unix(dt: datetime | str | None) -> int | None:
    if isinstance(dt, str):  # a timestamp read from SQLite by the driver, without SQLAlchemy
        dt = datetime.fromisoformat(dt)
    dt = as_utc(dt)
    return None if dt is None else int(dt.timestamp())


class Database:
    """Owns the engine. `read()` and `write()` give sessions inside one transaction each."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        kwargs: dict = {}
        if self.is_sqlite:
            _sqlite_folder(url)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            self._sqlite_pragmas(self.engine)
        # On SQLite a writer takes the write lock when it begins (BEGIN IMMEDIATE), so two
        # writers queue on busy_timeout instead of failing to upgrade a read lock.
        self._writer = (
            self.engine.execution_options(sqlite_immediate=True) if self.is_sqlite else self.engine
        )
        self._reads = async_sessionmaker(self.engine, expire_on_commit=False)
        self._writes = async_sessionmaker(self._writer, expire_on_commit=False,
                                          sync_session_class=Session if self.is_sqlite else _EventOrderedSession)
        self._sqlite: sqlite3.Connection | None = None
        self._pg_pool: Any = None
        self._pg_pool_lock = asyncio.Lock()
        self._pg_turns = asyncio.Semaphore(_PG_READERS)
        self._sqlite_write_turns = asyncio.Lock()

    @staticmethod
    def _sqlite_pragmas(engine: AsyncEngine) -> None:
        sync_engine = engine.sync_engine

        @event.listens_for(sync_engine, "connect")
        def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001
            # Take transaction control away from the driver so BEGIN is ours to emit.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(sync_engine, "begin")
        def _on_begin(conn) -> None:  # noqa: ANN001
            immediate = conn.get_execution_options().get("sqlite_immediate")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._reads() as session, session.begin():
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        if not self.is_sqlite:
            async with self._writes() as session, session.begin():
                yield session
            return
        # SQLite has one writer at a time. Writers of this process take turns here, in arrival
        # order; left to SQLite's busy handler they would sleep and retry (up to 100 ms a try),
        # which under load left the CPU idle and POST /jobs at ~130 req/s.
        async with self._sqlite_write_turns, self._writes() as session, session.begin():
            yield session

    async def rows(self, sql: str, *params: Any) -> list[Mapping[str, Any]]:
        """Run one SELECT on the driver itself, without SQLAlchemy: the hot reads (GET /jobs,
        GET /jobs/{id}, the runner's polls) take this path.

        Why: through the async engine a primary-key read costs 0.5-0.9 ms of CPU (aiosqlite runs
        every driver call on a helper thread and SQLAlchemy adapts asyncpg through greenlets);
        on the driver it is ~10 us on SQLite and ~0.13 ms on Postgres. SQLite reads run on the
        event loop's thread: in WAL mode a reader never waits for a writer, and a point read
        takes microseconds. `sql` uses `?` placeholders; values come back as the driver gives
        them (JSON columns as text, SQLite timestamps as text): `unix()` and the converters in
        rows.py read both forms.
        """
        if self.is_sqlite:
            # One yield to the event loop per read. Without it a request ran start to finish in
            # one step, and under load (GET /jobs, 64 connections) 1-2% of requests waited 0.3-1 s
            # while p90 was 38 ms; with it p99 was 55 ms at the same throughput.
            await asyncio.sleep(0)
            cur = self._sqlite_reader().execute(sql, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
        pool = await self._postgres_reader()
        # asyncpg's pool lets a newcomer take a just-released connection ahead of the requests
        # already waiting (they go back to the end of the queue), which under load left 1% of
        # reads waiting for 0.5 s; a fair semaphore in front keeps them in arrival order.
        async with self._pg_turns, pool.acquire() as conn:
            return await conn.fetch(_numbered(sql), *params)

    async def _postgres_reader(self) -> Any:
        # The first requests arrive together: one of them makes the pool, the others wait for it.
        async with self._pg_pool_lock:
            if self._pg_pool is None:
                import asyncpg

                dsn = make_url(self.url).set(drivername="postgresql").render_as_string(
                    hide_password=False)
                self._pg_pool = await asyncpg.create_pool(dsn, min_size=1, max_size=_PG_READERS)
        return self._pg_pool

    def _sqlite_reader(self) -> sqlite3.Connection:
        if self._sqlite is None:
            conn = sqlite3.connect(make_url(self.url).database, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            self._sqlite = conn
        return self._sqlite

    async def ping(self) -> None:
        async with self.read() as s:
            await s.execute(text("SELECT 1"))

    async def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg_pool is not None:
            await self._pg_pool.close()
        await self.engine.dispose()


class _EventOrderedSession(Session):
    """A Postgres write session that locks a job's row before inserting an event of that job.

    Followers page a job's events by `seq > cursor`. A sequence value is taken at insert but
    seen at commit, so two writers of one job could commit seq 51 before seq 50, and a follower
    that read 51 would never see 50. Holding the job's row lock from before the insert until the
    commit hands that job's sequence values out in commit order. (SQLite needs none of this:
    its one writer at a time does the same for every table.)"""


@event.listens_for(_EventOrderedSession, "before_flush")
def _lock_jobs_of_new_events(session: Session, _context: Any, _instances: Any) -> None:
    job_ids = sorted({row.job_id for row in session.new if isinstance(row, EventRow)})
    if job_ids:  # in id order, so two writers of the same jobs never wait on each other in a ring
        session.connection().execute(
            text("SELECT id FROM jobs WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"), {"ids": job_ids})


_QMARK = re.compile(r"\?")


def _numbered(sql: str) -> str:
    """`?` placeholders as asyncpg's `$1, $2, ...`."""
    count = iter(range(1, 1000))
    return _QMARK.sub(lambda _: f"${next(count)}", sql)


def _sqlite_folder(url: str) -> None:
    """SQLite creates the file but not its folder."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def migrate(url: str) -> None:
    """Upgrade the schema to head (blocking; call from a thread inside an event loop)."""
    _sqlite_folder(url)
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")
