"""/jobs: create, list, get, cancel, events (JSON pages or a live event stream), checkpoints,
the per-step results CSV; /hyperparameters: what a job's hyperparameters are."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import Response, ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from service import openai_types as o
from service.contracts import schema as s
from service.db.pages import MAX_PAGE
from service.errors import InvalidRequest
from service.http_errors import AUTHED, errors
from service.ids import request_hash
from service.jobs.service import JobService

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


_METADATA_PARAM = re.compile(r"^metadata\[([A-Za-z0-9_.:-]{1,64})\]$")


def metadata_filter(request: Request) -> dict[str, str]:
    """`metadata[k]=v` query parameters (OpenAI's filter on list)."""
    found = {}
    for name, value in request.query_params.items():
        if name.startswith("metadata"):
            m = _METADATA_PARAM.match(name)
            if m is None:
                raise InvalidRequest(f"filter on metadata as metadata[key]=value; {name!r} is not that",
                                     param=name)
            found[m.group(1)] = value
    return found


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
    async def list_jobs(self, request: Request, tenant: str, jobs: JobService, after: str | None = None,
                        limit: Limit = 20, status: s.Status | None = None) -> s.Page:
        """Newest first; filter by `status`, and by metadata with `metadata[key]=value`."""
        return await jobs.list_jobs(tenant, after, limit, status, metadata=metadata_filter(request))

    @get("/{job_id:str}", responses=errors(*AUTHED, 404))
    async def get_job(self, job_id: str, tenant: str, jobs: JobService) -> s.Job:
        return await jobs.get_job(tenant, job_id)

    @post("/{job_id:str}/cancel", status_code=200, responses=errors(*AUTHED, 404, 409))
    async def cancel_job(self, job_id: str, tenant: str, jobs: JobService) -> s.Job:
        return await jobs.cancel_job(tenant, job_id)

    @post("/{job_id:str}/pause", status_code=200, responses=errors(*AUTHED, 404, 409))
    async def pause_job(self, job_id: str, tenant: str, jobs: JobService) -> s.Job:
        """A queued job pauses at once; a running one saves a resume point at the next step
        boundary, frees its GPU and becomes `paused` (watch the job or its events)."""
        return await jobs.pause_job(tenant, job_id)

    @post("/{job_id:str}/resume", status_code=200, responses=errors(*AUTHED, 404, 409))
    async def resume_job(self, job_id: str, tenant: str, jobs: JobService) -> s.Job:
        """A paused job goes back to the queue and continues from where it paused."""
        return await jobs.resume_job(tenant, job_id)

    @get("/{job_id:str}/checkpoints", responses=errors(*AUTHED, 404))
    async def list_checkpoints(self, job_id: str, tenant: str, jobs: JobService) -> s.Page:
        items = await jobs.list_checkpoints(tenant, job_id)
        return s.Page(data=items, has_more=False, last_id=items[-1].id if items else None)

    @get("/{job_id:str}/results", responses=errors(*AUTHED, 404), media_type="text/csv")
    async def results(self, job_id: str, tenant: str, jobs: JobService) -> Response[str]:
        """The per-step metrics as CSV (step, epoch, train_loss, valid_loss, learning_rate,
        trained_tokens, supervised_tokens, tokens_per_second); rows so far on a running job."""
        body = await jobs.results_csv(tenant, job_id)
        return Response(body, media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{job_id}-results.csv"'})

    @get("/{job_id:str}/events", responses=errors(*AUTHED, 404))
    async def list_events(self, request: Request, job_id: str, tenant: str, jobs: JobService,
                          after: EventCursor = None, limit: Limit = 100) -> Response[Any]:
        page = await jobs.list_events(tenant, job_id, after, limit)
        if "text/event-stream" not in request.headers.get("accept", ""):
            return Response(page)
        return ServerSentEvent(_follow(jobs, tenant, job_id, page))


async def _follow(jobs: JobService, tenant: str, job_id: str,
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
            if (await jobs.get_job(tenant, job_id)).status in s.TERMINAL:
                page = await jobs.list_events(tenant, job_id, cursor, MAX_PAGE)
                if not page.data:
                    return
                continue
            await asyncio.sleep(SSE_POLL_S)
        page = await jobs.list_events(tenant, job_id, cursor, MAX_PAGE)


class V1FineTuningController(Controller):
    path = "/v1/fine_tuning/jobs"
    tags = ["openai: fine-tuning"]

    @post("/", responses=errors(*AUTHED, 404, 409, 422), status_code=200)
    async def create_job(self, request: Request, data: o.FineTuningJobCreate, tenant: str,
                         jobs: JobService) -> o.FineTuningJob | s.JobEstimate:
        """OpenAI's create; with tunedock's `dry_run: true` (extra_body), a JobEstimate instead."""
        if data.dry_run:
            return await jobs.dry_run(tenant, data.to_native())
        job, _ = await jobs.create(tenant, data.to_native(), request_hash(data),
                                   request.headers.get("idempotency-key"))
        return o.job_out(job, tenant)

    @get("/", responses=errors(*AUTHED, 404))
    async def list_jobs(self, request: Request, tenant: str, jobs: JobService, after: str | None = None,
                        limit: Limit = 20) -> o.ListPage:
        """Newest first; filter with `metadata[key]=value`."""
        page = await jobs.list_jobs(tenant, after, limit, metadata=metadata_filter(request))
        return o.page([o.job_out(j, tenant) for j in page.data], page.has_more)

    @get("/{job_id:str}", responses=errors(*AUTHED, 404))
    async def retrieve_job(self, job_id: str, tenant: str, jobs: JobService) -> o.FineTuningJob:
        return o.job_out(await jobs.get_job(tenant, job_id), tenant)

    @post("/{job_id:str}/cancel", status_code=200, responses=errors(*AUTHED, 404, 409))
    async def cancel_job(self, job_id: str, tenant: str, jobs: JobService) -> o.FineTuningJob:
        return o.job_out(await jobs.cancel_job(tenant, job_id), tenant)

    @post("/{job_id:str}/pause", status_code=200, responses=errors(*AUTHED, 404, 409))
    async def pause_job(self, job_id: str, tenant: str, jobs: JobService) -> o.FineTuningJob:
        """Queued: paused at once. Running: checkpoints at the next step, frees the GPU, pauses."""
        return o.job_out(await jobs.pause_job(tenant, job_id), tenant)

    @post("/{job_id:str}/resume", status_code=200, responses=errors(*AUTHED, 404, 409))
    async def resume_job(self, job_id: str, tenant: str, jobs: JobService) -> o.FineTuningJob:
        return o.job_out(await jobs.resume_job(tenant, job_id), tenant)

    @get("/{job_id:str}/events", responses=errors(*AUTHED, 404))
    async def list_events(self, job_id: str, tenant: str, jobs: JobService, after: EventCursor = None,
                          limit: Limit = 20) -> o.ListPage:
        """Newest first, as OpenAI lists them; `after` is the last event id of the previous page."""
        page = await jobs.list_events(tenant, job_id, after, limit, newest_first=True)
        return o.page([o.event_out(e) for e in page.data], page.has_more)

    @get("/{job_id:str}/checkpoints", responses=errors(*AUTHED, 404))
    async def list_checkpoints(self, job_id: str, tenant: str, jobs: JobService) -> o.ListPage:
        """One per epoch; `fine_tuned_model_checkpoint` is the name it is served under once
        deployed (POST /jobs/{id}/checkpoints/{epoch}/deploy)."""
        job = await jobs.get_job(tenant, job_id)
        return o.page([o.checkpoint_out(job, c) for c in await jobs.list_checkpoints(tenant, job_id)])
