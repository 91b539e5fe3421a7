"""Webhook endpoints as a tenant manages them, and the dispatcher that turns job events into
signed deliveries and sends them (service/webhooks/__init__.py has the whole path)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgspec
import structlog

from service.db.tables import EventRow
from service.errors import ServiceError, Unprocessable
from service.settings import Settings
from service.webhooks import signing, targets
from service.webhooks import wire as w
from service.webhooks.rows import WebhookDeliveryRow, WebhookEndpointRow
from service.webhooks.store import WebhookStore

log = structlog.get_logger()
KEEP_OLD_SECRET = 24 * 3600.0
MAX_BACKOFF = 3600.0
SETTLE_SECONDS = 10.0  # how far back each pass re-reads the event log (store.read_events)
BATCH = 32  # deliveries sent at once by one dispatcher
ERROR_TEXT = 300  # of a failed attempt's error, kept in the log


def event_of(event: EventRow) -> tuple[str, dict[str, Any]] | None:
    """The webhook event type and `data` of a job event, or None when it is not one."""
    data = event.data or {}
    if event.type == "checkpoint":
        return "fine_tuning.job.checkpoint.created", {
            "id": event.job_id, "checkpoint_id": data.get("checkpoint_id"),
            "epoch": data.get("epoch"), "step": data.get("step")}
    status = data.get("status")
    if status in ("succeeded", "failed", "cancelled", "paused"):
        return f"fine_tuning.job.{status}", {"id": event.job_id}
    if status == "queued" and data.get("previous") == "paused":
        return "fine_tuning.job.resumed", {"id": event.job_id}
    return None


def endpoint_out(row: WebhookEndpointRow) -> w.WebhookEndpoint:
    return w.WebhookEndpoint(id=row.id, created_at=int(row.created_at), updated_at=int(row.updated_at),
                             name=row.name, url=row.url, event_types=list(row.event_types),
                             signing_secret_hint=signing.hint(row.secret))


def endpoint_with_secret(row: WebhookEndpointRow) -> w.WebhookEndpointWithSecret:
    return w.WebhookEndpointWithSecret(**msgspec.structs.asdict(endpoint_out(row)),
                                       signing_secret=row.secret)


def delivery_out(row: WebhookDeliveryRow) -> w.WebhookDelivery:
    return w.WebhookDelivery(
        id=row.id, webhook_endpoint_id=row.endpoint_id, event_id=row.event_id,
        event_type=row.event_type, job_id=row.job_id, status=row.status, created_at=int(row.created_at),  # type: ignore[arg-type]
        delivered_at=int(row.delivered_at) if row.delivered_at else None,
        next_attempt_at=int(row.next_attempt_at) if row.next_attempt_at else None,
        attempts=[msgspec.convert(a, w.DeliveryAttempt) for a in row.attempts])


class WebhookService:
    def __init__(self, settings: Settings, store: WebhookStore) -> None:
        self.settings = settings
        self.store = store
        self.http = _client(settings)  # for POST …/test, on the requests' event loop
        self._task: asyncio.Task | None = None
        self._dispatch, self._dispatch_http = store, self.http

    # -- endpoints --------------------------------------------------------------------------------
    async def create(self, tenant: str, body: w.WebhookEndpointCreate) -> w.WebhookEndpointWithSecret:
        await targets.check(body.url, self.settings.webhook_allow_private_urls)
        row = await self.store.create_endpoint(tenant, body.name, body.url, _unique(body.event_types),
                                               signing.new_secret())
        return endpoint_with_secret(row)

    async def get(self, tenant: str, endpoint_id: str) -> w.WebhookEndpoint:
        return endpoint_out(await self.store.get_endpoint(tenant, endpoint_id))

    async def list_endpoints(self, tenant: str, after: str | None, limit: int) -> w.WebhookEndpointList:
        rows, more = await self.store.list_endpoints(tenant, after, limit)
        return w.WebhookEndpointList(data=[endpoint_out(r) for r in rows], has_more=more,
                                     first_id=rows[0].id if rows else None,
                                     last_id=rows[-1].id if rows else None)

    async def delete(self, tenant: str, endpoint_id: str) -> w.DeletedWebhookEndpoint:
        await self.store.delete_endpoint(tenant, endpoint_id)
        return w.DeletedWebhookEndpoint(id=endpoint_id)

    async def deliveries(self, tenant: str, endpoint_id: str, after: str | None, limit: int
                         ) -> w.WebhookDeliveryList:
        rows, more = await self.store.list_deliveries(tenant, endpoint_id, after, limit)
        return w.WebhookDeliveryList(data=[delivery_out(r) for r in rows], has_more=more,
                                     first_id=rows[0].id if rows else None,
                                     last_id=rows[-1].id if rows else None)

    async def update(self, tenant: str, endpoint_id: str, body: w.WebhookEndpointUpdate) -> w.WebhookEndpoint:
        if body.url is not None:
            await targets.check(body.url, self.settings.webhook_allow_private_urls)
        row = await self.store.update_endpoint(
            tenant, endpoint_id, url=body.url, name=body.name,
            event_types=_unique(body.event_types) if body.event_types else None)
        return endpoint_out(row)

    async def rotate(self, tenant: str, endpoint_id: str, body: w.RotateSecret) -> w.WebhookEndpointWithSecret:
        keep = KEEP_OLD_SECRET if body.keep_old_secret_active_for_24_hours else None
        return endpoint_with_secret(await self.store.rotate(tenant, endpoint_id, signing.new_secret(), keep))

    async def test(self, tenant: str, endpoint_id: str, body: w.WebhookTest) -> w.WebhookEndpointTestResult:
        """Send one event now (data.id names no job) and say what the receiver answered."""
        row = await self.store.get_endpoint(tenant, endpoint_id)
        event = w.WebhookEvent(id=f"evt-test-{int(time.time() * 1000)}", type=body.event_type,
                               created_at=int(time.time()), data={"id": "ftjob-test", "test": True})
        status, error = await self._post(self.http, row, event.id, msgspec.json.encode(event))
        if status is None:
            raise Unprocessable(f"the endpoint did not answer: {error}", param="url", code="webhook_unreachable")
        return w.WebhookEndpointTestResult(webhook_endpoint_id=row.id, event_type=body.event_type,
                                           status_code=status)

    # -- the dispatcher ---------------------------------------------------------------------------
    def start(self, store: WebhookStore) -> None:
        """Run the dispatcher on `store`: its own database engine, so the dispatcher's task shares
        no connection or lock with request handlers (a test client may run those on another
        event loop than the app's lifespan)."""
        self._dispatch, self._dispatch_http = store, _client(self.settings)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            await self._dispatch_http.aclose()
        await self.http.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self.fan_out()
                await self.deliver_due()
            except Exception:  # noqa: BLE001 - the database may come back; try again next pass
                log.warning("webhook dispatch failed", exc_info=True)
            await asyncio.sleep(self.settings.webhook_poll_seconds)

    async def fan_out(self) -> int:
        """One delivery row per new job event and subscribed endpoint of its tenant."""
        events = await self._dispatch.read_events(SETTLE_SECONDS)
        if not events:
            return 0
        endpoints = await self._dispatch.endpoints_of({tenant for _, tenant in events})
        rows = []
        for event, tenant in events:
            found = event_of(event)
            if found is None:
                continue
            kind, data = found
            created = event.created_at.timestamp()
            body = w.WebhookEvent(id=f"evt-{event.seq}", type=kind, created_at=int(created), data=data)
            payload = msgspec.json.encode(body).decode()
            rows += [dict(id=f"whdel-{event.seq}-{e.id.removeprefix('whep-')}", endpoint_id=e.id,
                          tenant=tenant, event_id=body.id, event_type=kind, job_id=event.job_id,
                          payload=payload, status="pending", attempts=[], next_attempt_at=time.time(),
                          lease_until=None, created_at=created, delivered_at=None)
                     for e in endpoints
                     if e.tenant == tenant and kind in e.event_types and e.created_at <= created + 1]
        await self._dispatch.add_deliveries(rows)
        return len(rows)

    async def deliver_due(self) -> int:
        """Send what is due: endpoints at once, each endpoint's events one after another in the
        order they happened (a receiver sees paused before resumed; a retry does not hold back
        later events, so order is kept only among deliveries that succeed at once)."""
        claimed = await self._dispatch.claim_due(BATCH, self.settings.webhook_timeout_seconds + 30)
        by_endpoint: dict[str, list[tuple[WebhookDeliveryRow, WebhookEndpointRow]]] = {}
        for delivery, endpoint in claimed:
            by_endpoint.setdefault(endpoint.id, []).append((delivery, endpoint))

        async def in_order(pairs: list[tuple[WebhookDeliveryRow, WebhookEndpointRow]]) -> None:
            for delivery, endpoint in sorted(pairs, key=lambda p: (p[0].created_at, p[0].id)):
                await self._deliver(delivery, endpoint)

        await asyncio.gather(*(in_order(pairs) for pairs in by_endpoint.values()))
        return len(claimed)

    async def _deliver(self, delivery: WebhookDeliveryRow, endpoint: WebhookEndpointRow) -> None:
        started = time.time()
        status, error = await self._post(self._dispatch_http, endpoint, delivery.event_id,
                                         delivery.payload.encode())
        delivered = status is not None and 200 <= status < 300
        n = len(delivery.attempts) + 1
        retry_at = None
        if not delivered and n < self.settings.webhook_max_attempts:
            retry_at = time.time() + min(self.settings.webhook_backoff_seconds * 2 ** (n - 1), MAX_BACKOFF)
        attempt = {"at": int(started), "status_code": status, "error": error,
                   "duration_ms": int((time.time() - started) * 1000)}
        await self._dispatch.record_attempt(delivery.id, attempt, delivered, retry_at)
        log.info("webhook attempt", delivery=delivery.id, status=status, error=error, attempt=n,
                 delivered=delivered, retry=retry_at is not None)

    async def _post(self, http: httpx.AsyncClient, endpoint: WebhookEndpointRow, msg_id: str,
                    body: bytes) -> tuple[int | None, str | None]:
        """(HTTP status, None), or (None, why no answer came). The receiver's body is not read:
        only its status counts, and a large one must not cost the dispatcher memory."""
        try:
            await targets.check(endpoint.url, self.settings.webhook_allow_private_urls)
        except ServiceError as exc:
            return None, f"refused: {exc.message}"[:ERROR_TEXT]
        secrets = [endpoint.secret]
        if endpoint.previous_secret and (endpoint.previous_secret_expires_at or 0) > time.time():
            secrets.append(endpoint.previous_secret)
        headers = signing.headers(secrets, msg_id, int(time.time()), body)
        try:
            async with http.stream("POST", endpoint.url, content=body, headers=headers) as answer:
                status = answer.status_code
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:ERROR_TEXT]
        return status, None if 200 <= status < 300 else f"HTTP {status}"


def _client(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=settings.webhook_timeout_seconds, follow_redirects=False,
                             headers={"User-Agent": "tunedock-webhooks", "Content-Type": "application/json"})


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
