"""The store: one object over the database that the API, the runner and the tests hold. Each
resource lives in its own module, which owns its SQL: store_keys (API keys, idempotency),
store_files, store_jobs (jobs, leases and the only writes of job rows), store_events (events,
checkpoints); rows.py turns rows into wire types. Exports keep their own store
(service/exports/store.py), webhooks theirs (service/webhooks/store.py)."""

from __future__ import annotations

from service.db.engine import Database
from service.jobs.rows import MAX_PAGE, Lease, event_row, job_from_row, request_hash
from service.jobs.store_events import EventsStore
from service.jobs.store_files import FilesStore

__all__ = ["MAX_PAGE", "Lease", "Store", "event_row", "job_from_row", "request_hash"]


class Store(FilesStore, EventsStore):
    def __init__(self, db: Database) -> None:
        self.db = db
