"""All of the webhooks' SQL: endpoints, the delivery outbox, and the read of the job event log."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.engine import Database
from service.db.tables import EventRow, JobRow
from service.errors import NotFound
from service.ids import new_id
from service.webhooks.rows import WebhookCursorRow, WebhookDeliveryRow, WebhookEndpointRow

CURSOR = "job_events"
READ_BATCH = 1000


def _newest_first(q: Any, row: Any, anchor: Any, limit: int) -> Any:
    """`q` as one keyset page, newest first, after `anchor` (the previous page's last row); one
    row more than `limit`, so the caller can tell whether there are more."""
    if anchor is not None:
        q = q.where(or_(row.created_at < anchor.created_at,
                        and_(row.created_at == anchor.created_at, row.id < anchor.id)))
    return q.order_by(row.created_at.desc(), row.id.desc()).limit(limit + 1)


class WebhookStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- endpoints --------------------------------------------------------------------------------
    async def create_endpoint(self, tenant: str, name: str, url: str, event_types: list[str],
                              secret: str) -> WebhookEndpointRow:
        now = time.time()
        row = WebhookEndpointRow(id=new_id("whep"), tenant=tenant, name=name, url=url,
                                 event_types=event_types, secret=secret, created_at=now, updated_at=now)
        async with self.db.write() as ses:
            ses.add(row)
        return row

    async def _endpoint(self, ses: AsyncSession, tenant: str, endpoint_id: str) -> WebhookEndpointRow:
        row = await ses.get(WebhookEndpointRow, endpoint_id)
        if row is None or row.tenant != tenant:  # another tenant's answers as a missing one
            raise NotFound(f"no webhook endpoint {endpoint_id!r}", param="webhook_endpoint_id")
        return row

    async def get_endpoint(self, tenant: str, endpoint_id: str) -> WebhookEndpointRow:
        async with self.db.read() as ses:
            return await self._endpoint(ses, tenant, endpoint_id)

    async def list_endpoints(self, tenant: str, after: str | None, limit: int
                             ) -> tuple[list[WebhookEndpointRow], bool]:
        """Newest first; `after` is the last id of the previous page."""
        async with self.db.read() as ses:
            q = select(WebhookEndpointRow).where(WebhookEndpointRow.tenant == tenant)
            anchor = await self._endpoint(ses, tenant, after) if after else None
            rows = list((await ses.scalars(_newest_first(q, WebhookEndpointRow, anchor, limit))).all())
        return rows[:limit], len(rows) > limit

    async def update_endpoint(self, tenant: str, endpoint_id: str, **fields: Any) -> WebhookEndpointRow:
        async with self.db.write() as ses:
            row = await self._endpoint(ses, tenant, endpoint_id)
            changed = {k: v for k, v in fields.items() if v is not None and getattr(row, k) != v}
            for key, value in changed.items():
                setattr(row, key, value)
            if changed:
                row.updated_at = time.time()
            return row

    async def rotate(self, tenant: str, endpoint_id: str, secret: str, keep_old_for: float | None
                     ) -> WebhookEndpointRow:
        async with self.db.write() as ses:
            row = await self._endpoint(ses, tenant, endpoint_id)
            now = time.time()
            row.previous_secret = row.secret if keep_old_for else None
            row.previous_secret_expires_at = now + keep_old_for if keep_old_for else None
            row.secret, row.updated_at = secret, now
            return row

    async def delete_endpoint(self, tenant: str, endpoint_id: str) -> None:
        """With its deliveries: nothing more is sent to it."""
        async with self.db.write() as ses:
            row = await self._endpoint(ses, tenant, endpoint_id)
            await ses.execute(WebhookDeliveryRow.__table__.delete().where(
                WebhookDeliveryRow.endpoint_id == endpoint_id))
            await ses.delete(row)

    # -- deliveries -------------------------------------------------------------------------------
    async def list_deliveries(self, tenant: str, endpoint_id: str, after: str | None, limit: int
                              ) -> tuple[list[WebhookDeliveryRow], bool]:
        """Newest first (by event); `after` is the last delivery id of the previous page."""
        async with self.db.read() as ses:
            await self._endpoint(ses, tenant, endpoint_id)
            q = select(WebhookDeliveryRow).where(WebhookDeliveryRow.endpoint_id == endpoint_id)
            anchor = await ses.get(WebhookDeliveryRow, after) if after else None
            if after and (anchor is None or anchor.endpoint_id != endpoint_id):
                raise NotFound(f"no delivery {after!r} of this endpoint", param="after")
            rows = list((await ses.scalars(_newest_first(q, WebhookDeliveryRow, anchor, limit))).all())
        return rows[:limit], len(rows) > limit

    async def read_events(self, settle: float) -> list[tuple[EventRow, str]]:
        """Job events not yet turned into deliveries, with their job's tenant, oldest first.

        The cursor moves only past events older than `settle` seconds: on Postgres an event's seq
        is taken before its transaction commits, so a later seq can be seen first; re-reading the
        last `settle` seconds on each pass (deliveries are written once: `add_deliveries`) picks
        up the one that committed late. A first start begins at the end of the log."""
        async with self.db.read() as ses:  # an idle pass writes nothing
            at = await ses.scalar(select(WebhookCursorRow.seq).where(WebhookCursorRow.name == CURSOR))
            if at is not None:
                found = (await ses.execute(
                    select(EventRow, JobRow.tenant).join(JobRow, JobRow.id == EventRow.job_id)
                    .where(EventRow.seq > at, EventRow.type.in_(("status", "checkpoint")))
                    .order_by(EventRow.seq).limit(READ_BATCH))).all()
                cutoff = datetime.now(timezone.utc) - timedelta(seconds=settle)
                settled = await ses.scalar(select(func.max(EventRow.seq)).where(
                    EventRow.seq > at, EventRow.created_at < cutoff)) or 0
                if len(found) == READ_BATCH:  # more to read: never move past what was read
                    settled = min(settled, found[-1][0].seq)
        if at is None:
            async with self.db.write() as ses:
                if await ses.get(WebhookCursorRow, CURSOR) is None:
                    last = await ses.scalar(select(func.max(EventRow.seq)))
                    ses.add(WebhookCursorRow(name=CURSOR, seq=last or 0))
            return []
        if settled > at:
            async with self.db.write() as ses:  # forward only, whoever moved it meanwhile
                await ses.execute(update(WebhookCursorRow).where(
                    WebhookCursorRow.name == CURSOR, WebhookCursorRow.seq < settled).values(seq=settled))
        return [(event, tenant) for event, tenant in found]

    async def endpoints_of(self, tenants: set[str]) -> list[WebhookEndpointRow]:
        async with self.db.read() as ses:
            return list((await ses.scalars(select(WebhookEndpointRow).where(
                WebhookEndpointRow.tenant.in_(tenants)))).all())

    async def add_deliveries(self, rows: list[dict[str, Any]]) -> None:
        """Insert each delivery unless it exists (ids are event x endpoint)."""
        if not rows:
            return
        async with self.db.write() as ses:
            dialect = postgresql if ses.bind.dialect.name == "postgresql" else sqlite
            await ses.execute(dialect.insert(WebhookDeliveryRow).values(rows).on_conflict_do_nothing())

    async def claim_due(self, limit: int, hold: float) -> list[tuple[WebhookDeliveryRow, WebhookEndpointRow]]:
        """Up to `limit` pending deliveries whose time has come, each held for `hold` seconds by
        this dispatcher (a conditional update, so two API processes never send one twice at once)."""
        now = time.time()
        async with self.db.write() as ses:
            due = (await ses.execute(
                select(WebhookDeliveryRow, WebhookEndpointRow)
                .join(WebhookEndpointRow, WebhookEndpointRow.id == WebhookDeliveryRow.endpoint_id)
                .where(WebhookDeliveryRow.status == "pending", WebhookDeliveryRow.next_attempt_at <= now,
                       or_(WebhookDeliveryRow.lease_until.is_(None), WebhookDeliveryRow.lease_until < now))
                .order_by(WebhookDeliveryRow.next_attempt_at).limit(limit))).all()
            claimed = []
            for delivery, endpoint in due:
                result = await ses.execute(update(WebhookDeliveryRow).where(
                    WebhookDeliveryRow.id == delivery.id, WebhookDeliveryRow.status == "pending",
                    or_(WebhookDeliveryRow.lease_until.is_(None), WebhookDeliveryRow.lease_until < now))
                    .values(lease_until=now + hold))
                if result.rowcount == 1:
                    claimed.append((delivery, endpoint))
            return claimed

    async def record_attempt(self, delivery_id: str, attempt: dict[str, Any], delivered: bool,
                             retry_at: float | None) -> None:
        """The attempt appended to the delivery's log; delivered, retried at `retry_at`, or failed
        (retry_at None)."""
        async with self.db.write() as ses:
            row = await ses.get(WebhookDeliveryRow, delivery_id)
            if row is None:  # its endpoint was deleted meanwhile
                return
            row.attempts = [*row.attempts, attempt]
            row.lease_until = None
            if delivered:
                row.status, row.delivered_at, row.next_attempt_at = "delivered", attempt["at"], None
            elif retry_at is None:
                row.status, row.next_attempt_at = "failed", None
            else:
                row.next_attempt_at = retry_at
