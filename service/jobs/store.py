"""The store: one object over the database that the API, the runner and the tests hold. Each
resource's SQL lives in its own module: service/keys/store.py (API keys, idempotency),
service/files/store.py, store_jobs.py here (jobs, leases and the only writes of job rows),
store_events.py here (events, checkpoints); rows.py turns job rows into wire types. Exports,
webhooks and deployments keep their own stores in their folders."""

from __future__ import annotations

from service.db.engine import Database
from service.files.store import FilesStore
from service.jobs.rows import Lease, event_row, job_from_row
from service.jobs.store_events import EventsStore

__all__ = ["Lease", "Store", "event_row", "job_from_row"]


class Store(FilesStore, EventsStore):
    def __init__(self, db: Database) -> None:
        self.db = db
