"""/jobs: create, list, get, cancel, events (JSON pages or a live event stream), checkpoints,
the per-step results CSV; /hyperparameters: what a job's hyperparameters are."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import Response, ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from service.api.deps import metadata_filter
from service.contracts import schema as s
from service.http_errors import AUTHED, errors
from service.jobs.deployments import Deployments
from service.jobs.results import results_csv
from service.jobs.service import JobService
from service.jobs.store import MAX_PAGE, Store, request_hash

Limit = Annotated[int, Parameter(ge=1, le=MAX_PAGE)]
IdempotencyKey = Annotated[str | None, Parameter(header="Idempotency-Key", max_length=255)]
EventCursor = Annotated[str | None, Parameter(pattern=r"^ftevent-[0-9]{1,18}$",
                                              description="the last event id of the previous page")]
SSE_POLL_S = 0.5
# A comment line this often while nothing happens (a queued or paused job can wait for hours):
# proxies keep the connection open, and a client that has gone is found when the write fails.
SSE_KEEPALIVE_S = 15.0


# The JSON Schema of s.Hyperparameters, as msgspec writes it from the one declaration.
HYPERPARAMETERS = msgspec.json.schema(s.Hyperparameters)["$defs"]["Hyperparameters"]


@get("/hyperparameters", tags=["jobs"], responses=errors(*AUTHED))
async def hyperparameters(tenant: str) -> dict[str, Any]:
    """Every hyperparameter a job takes, as JSON Schema: type, bounds, default and meaning of
    each under `properties` (the dashboard's New-job form reads its fields from here)."""
    return HYPERPARAMETERS


class JobsController(Controller):
    path = "/jobs"
    tags = ["jobs"]

    @post("/", responses={**errors(*AUTHED, 404, 409, 422), 200: ResponseSpec(
        data_container=s.JobEstimate, generate_examples=False,
        description="dry_run: the data checked, the memory plan and the estimated duration; "
                    "no job was created")})
    async def create_job(self, data: s.JobCreate, tenant: str, jobs: JobService,
                         idempotency_key: IdempotencyKey = None) -> Response[s.Job]:
        """Create a job (201), or with `dry_run: true` check it and estimate it (200, JobEstimate).
        A dry run reads the whole training file before it answers."""
        if data.dry_run:
            return Response(await jobs.dry_run(tenant, data), status_code=200)  # type: ignore[arg-type]
        job, created = await jobs.create(tenant, data, request_hash(data), idempotency_key)
        return Response(job, status_code=201, headers={"Idempotent-Replayed": str(not created).lower()})

    @get("/", responses=errors(*AUTHED, 404))
    async def list_jobs(self, request: Request, tenant: str, store: Store, after: str | None = None,
                        limit: Limit = 20, status: s.Status | None = None) -> s.Page:
        """Newest first; filter by `status`, and by metadata with `metadata[key]=value`."""
        return await store.list_jobs(tenant, after, limit, status, metadata=metadata_filter(request))

    @get("/{job_id:str}", responses=errors(*AUTHED, 404))
    async def get_job(self, job_id: str, tenant: str, store: Store) -> s.Job:
        return await store.get_job(tenant, job_id)

    @post("/{job_id:str}/cancel", status_code=200, responses=errors(*AUTHED, 404, 409))
    async def cancel_job(self, job_id: str, tenant: str, store: Store) -> s.Job:
        return await store.cancel_job(tenant, job_id)

    @post("/{job_id:str}/pause", status_code=200, responses=errors(*AUTHED, 404, 409))
    async def pause_job(self, job_id: str, tenant: str, store: Store) -> s.Job:
        """A queued job pauses at once; a running one saves a resume point at the next step
        boundary, frees its GPU and becomes `paused` (watch the job or its events)."""
        return await store.pause_job(tenant, job_id)

    @post("/{job_id:str}/resume", status_code=200, responses=errors(*AUTHED, 404, 409))
    async def resume_job(self, job_id: str, tenant: str, store: Store) -> s.Job:
        """A paused job goes back to the queue and continues from where it paused."""
        return await store.resume_job(tenant, job_id)

    @get("/{job_id:str}/checkpoints", responses=errors(*AUTHED, 404))
    async def list_checkpoints(self, job_id: str, tenant: str, store: Store) -> s.Page:
        items = await store.list_checkpoints(tenant, job_id)
        return s.Page(data=items, has_more=False, last_id=items[-1].id if items else None)

    @post("/{job_id:str}/checkpoints/{epoch:int}/deploy", status_code=202,
          responses=errors(*AUTHED, 404))
    async def deploy_checkpoint(self, job_id: str, epoch: int, tenant: str, store: Store,
                                deployments: Deployments) -> s.ModelInfo:
        """Serve an epoch checkpoint as `<fine_tuned_model>:ckpt-<epoch>`."""
        return await deployments.deploy_checkpoint(store, tenant, job_id, epoch)

    @get("/{job_id:str}/results", responses=errors(*AUTHED, 404), media_type="text/csv")
    async def results(self, job_id: str, tenant: str, store: Store) -> Response[str]:
        """The per-step metrics as CSV (step, epoch, train_loss, valid_loss, learning_rate,
        trained_tokens, supervised_tokens, tokens_per_second); rows so far on a running job."""
        body = await results_csv(store, tenant, job_id)
        return Response(body, media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{job_id}-results.csv"'})

    @get("/{job_id:str}/events", responses=errors(*AUTHED, 404))
    async def list_events(self, request: Request, job_id: str, tenant: str, store: Store,
                          after: EventCursor = None, limit: Limit = 100) -> Response[Any]:
        page = await store.list_events(tenant, job_id, after, limit)
        if "text/event-stream" not in request.headers.get("accept", ""):
            return Response(page)
        return ServerSentEvent(_follow(store, tenant, job_id, page))


async def _follow(store: Store, tenant: str, job_id: str,
                  page: s.Page) -> AsyncIterator[str | ServerSentEventMessage]:
    """Yield events as they are written, until the job has ended and every event is out."""
    cursor = None
    quiet_since = time.monotonic()
    while True:
        for event in page.data:
            yield msgspec.json.encode(event).decode()
        if page.data:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= SSE_KEEPALIVE_S:
            yield ServerSentEventMessage(comment="keep-alive", data=None)  # a comment line only
            quiet_since = time.monotonic()
        cursor = page.last_id or cursor
        if not page.data and not page.has_more:
            # The final status and its event are written in one transaction, so once the job
            # has ended, one more read returns everything that is left.
            if (await store.get_job(tenant, job_id)).status in s.TERMINAL:
                page = await store.list_events(tenant, job_id, cursor, MAX_PAGE)
                if not page.data:
                    return
                continue
            await asyncio.sleep(SSE_POLL_S)
        page = await store.list_events(tenant, job_id, cursor, MAX_PAGE)
