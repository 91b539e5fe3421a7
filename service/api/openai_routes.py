"""OpenAI-compatible /v1 routes for files, fine-tuning jobs and models: the official `openai`
SDK works unchanged with base_url=<api>/v1 and a tenant key. Each handler maps onto the same
services as the native routes (service/api/jobs.py, files.py, models.py); the shapes are in
openai_types.py."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, delete, get, post
from litestar.params import Parameter
from litestar.response import Response, Stream

from service.api import openai_types as o
from service.api.deps import metadata_filter
from service.api.files import receive_upload
from service.api.gateway import model_not_found
from service.api.openapi import MultipartUpload
from service.contracts import schema as s
from service.errors import NotFound
from service.http_errors import AUTHED, errors
from service.ids import result_file_id, result_file_job
from service.jobs.deployments import Deployments
from service.jobs.files import FileService
from service.jobs.results import FILENAME as RESULTS_NAME
from service.jobs.results import refuse_delete, result_file
from service.jobs.service import JobService
from service.jobs.store import MAX_PAGE, Store, request_hash
from service.settings import Settings

Limit = Annotated[int, Parameter(ge=1, le=MAX_PAGE)]
EventCursor = Annotated[str | None, Parameter(pattern=r"^ftevent-[0-9]{1,18}$")]
class V1FilesController(Controller):
    path = "/v1/files"
    tags = ["openai: files"]

    @post("/", request_max_body_size=None, operation_class=MultipartUpload, status_code=200,
          responses=errors(*AUTHED, 409, 413, 422))
    async def create_file(self, request: Request, tenant: str, files: FileService,
                          settings: Settings) -> Response[o.OpenAIFile]:
        """Upload a JSONL training file (`file` part; `purpose` is accepted as OpenAI sends it)."""
        file, _ = await receive_upload(request, tenant, files, settings,
                                       request.headers.get("idempotency-key"))
        return Response(o.file_out(file), status_code=200)

    @get("/", responses=errors(*AUTHED, 404))
    async def list_files(self, tenant: str, store: Store, after: str | None = None,
                         limit: Limit = 20, purpose: str | None = None) -> o.ListPage:
        """Uploads (`purpose=fine-tune`, the default), or with `purpose=fine-tune-results` the
        result files of succeeded jobs, newest first; no file has any other purpose here."""
        if purpose == "fine-tune-results":
            anchor = result_file_job(after) if after else None
            if after and anchor is None:
                raise NotFound(f"after={after!r} is not a result file id (file-results-…)", param="after")
            jobs = await store.list_jobs(tenant, anchor, limit, status=s.Status.succeeded)
            out = []
            for job in jobs.data:
                _, content = await result_file(store, tenant, result_file_id(job.id))
                out.append(o.result_file_out(job, len(content), RESULTS_NAME))
            return o.page(out, jobs.has_more)
        if purpose not in (None, "fine-tune"):
            return o.page([])
        page = await store.list_files(tenant, after, limit)
        return o.page([o.file_out(f) for f in page.data], page.has_more)

    @get("/{file_id:str}", responses=errors(*AUTHED, 404))
    async def retrieve_file(self, file_id: str, tenant: str, store: Store) -> o.OpenAIFile:
        """An upload, or a job's result file (a `result_files` id: purpose fine-tune-results)."""
        if result_file_job(file_id):
            job, content = await result_file(store, tenant, file_id)
            return o.result_file_out(job, len(content), RESULTS_NAME)
        return o.file_out(await store.get_file(tenant, file_id))

    @get("/{file_id:str}/content", responses=errors(*AUTHED, 404), media_type="application/octet-stream")
    async def file_content(self, file_id: str, tenant: str, store: Store, files: FileService
                           ) -> Stream | Response[bytes]:
        """The file's bytes; a result file's are its job's per-step CSV (GET /jobs/{id}/results)."""
        if result_file_job(file_id):
            _, content = await result_file(store, tenant, file_id)
            return Response(content, media_type="text/csv")
        row = await store.file_row(tenant, file_id)
        return Stream(await files.open_content(row), media_type="application/octet-stream",
                      headers={"Content-Length": str(row.bytes)})

    @delete("/{file_id:str}", status_code=200, responses=errors(*AUTHED, 404, 409))
    async def delete_file(self, file_id: str, tenant: str, files: FileService, store: Store) -> o.Deleted:
        """Refused (409) while a job that has not ended reads the file, and for a result file
        (it lives as long as its job)."""
        if result_file_job(file_id):
            await result_file(store, tenant, file_id)  # 404 for what this tenant cannot see
            raise refuse_delete(file_id)
        await files.delete(tenant, file_id)
        return o.Deleted(id=file_id, object="file")


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
    async def list_jobs(self, request: Request, tenant: str, store: Store, after: str | None = None,
                        limit: Limit = 20) -> o.ListPage:
        """Newest first; filter with `metadata[key]=value`."""
        page = await store.list_jobs(tenant, after, limit, metadata=metadata_filter(request))
        return o.page([o.job_out(j, tenant) for j in page.data], page.has_more)

    @get("/{job_id:str}", responses=errors(*AUTHED, 404))
    async def retrieve_job(self, job_id: str, tenant: str, store: Store) -> o.FineTuningJob:
        return o.job_out(await store.get_job(tenant, job_id), tenant)

    @post("/{job_id:str}/cancel", status_code=200, responses=errors(*AUTHED, 404, 409))
    async def cancel_job(self, job_id: str, tenant: str, store: Store) -> o.FineTuningJob:
        return o.job_out(await store.cancel_job(tenant, job_id), tenant)

    @post("/{job_id:str}/pause", status_code=200, responses=errors(*AUTHED, 404, 409))
    async def pause_job(self, job_id: str, tenant: str, store: Store) -> o.FineTuningJob:
        """Queued: paused at once. Running: checkpoints at the next step, frees the GPU, pauses."""
        return o.job_out(await store.pause_job(tenant, job_id), tenant)

    @post("/{job_id:str}/resume", status_code=200, responses=errors(*AUTHED, 404, 409))
    async def resume_job(self, job_id: str, tenant: str, store: Store) -> o.FineTuningJob:
        return o.job_out(await store.resume_job(tenant, job_id), tenant)

    @get("/{job_id:str}/events", responses=errors(*AUTHED, 404))
    async def list_events(self, job_id: str, tenant: str, store: Store, after: EventCursor = None,
                          limit: Limit = 20) -> o.ListPage:
        """Newest first, as OpenAI lists them; `after` is the last event id of the previous page."""
        page = await store.list_events(tenant, job_id, after, limit, newest_first=True)
        return o.page([o.event_out(e) for e in page.data], page.has_more)

    @get("/{job_id:str}/checkpoints", responses=errors(*AUTHED, 404))
    async def list_checkpoints(self, job_id: str, tenant: str, store: Store) -> o.ListPage:
        """One per epoch; `fine_tuned_model_checkpoint` is the name it is served under once
        deployed (POST /jobs/{id}/checkpoints/{epoch}/deploy)."""
        job = await store.get_job(tenant, job_id)
        return o.page([o.checkpoint_out(job, c) for c in await store.list_checkpoints(tenant, job_id)])


class V1ModelsController(Controller):
    path = "/v1/models"
    tags = ["openai: models"]

    @get("/", responses=errors(*AUTHED))
    async def list_models(self, tenant: str, settings: Settings, deployments: Deployments) -> o.ListPage:
        """Base models, then this tenant's fine-tuned models and served checkpoints."""
        return o.page(await _models(tenant, settings, deployments))

    @get("/{model:str}", responses=errors(*AUTHED, 404))
    async def retrieve_model(self, model: str, tenant: str, settings: Settings,
                             deployments: Deployments) -> o.Model:
        found = next((m for m in await _models(tenant, settings, deployments) if m.id == model), None)
        if found is None:
            raise model_not_found(model)
        return found

    @delete("/{model:str}", status_code=200, responses=errors(*AUTHED, 404))
    async def delete_model(self, model: str, tenant: str, deployments: Deployments) -> o.Deleted:
        """Stop serving a fine-tuned model; its files stay and it can be deployed again."""
        await deployments.unload(tenant, model)
        return o.Deleted(id=model, object="model")


async def _models(tenant: str, settings: Settings, deployments: Deployments) -> list[o.Model]:
    data = [o.Model(id=m.alias, created=0, owned_by="tunedock",
                    status="served" if m.alias in settings.served_models else "not served")
            for m in settings.base_models]
    data += [o.Model(id=m.id, created=m.loaded_at or 0, owned_by=tenant, parent=m.base_model,
                     status=m.status)
             for m in await deployments.for_tenant(tenant) if m.status != "unloaded"]
    return data
