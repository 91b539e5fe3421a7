"""OpenAI's /v1/files: uploads (the same service as /files) and, with purpose fine-tune-results, the
per-step CSV of each succeeded job (OpenAI's `result_files`). It serves both domains, so it lives
here above them rather than in service/files/ (files sits below jobs: a job reads its files)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, delete, get, post
from litestar.params import Parameter
from litestar.response import Response, Stream

from service import openai_types as o
from service.contracts import schema as s
from service.db.pages import MAX_PAGE
from service.errors import NotFound
from service.files.routes import MultipartUpload, receive_upload
from service.files.service import FileService
from service.http_errors import AUTHED, errors
from service.ids import result_file_id, result_file_job
from service.jobs.results import FILENAME as RESULTS_NAME
from service.jobs.results import refuse_delete
from service.jobs.service import JobService
from service.settings import Settings

Limit = Annotated[int, Parameter(ge=1, le=MAX_PAGE)]


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
    async def list_files(self, tenant: str, jobs: JobService, files: FileService, after: str | None = None,
                         limit: Limit = 20, purpose: str | None = None) -> o.ListPage:
        """Uploads (`purpose=fine-tune`, the default), or with `purpose=fine-tune-results` the
        result files of succeeded jobs, newest first; no file has any other purpose here."""
        if purpose == "fine-tune-results":
            anchor = result_file_job(after) if after else None
            if after and anchor is None:
                raise NotFound(f"after={after!r} is not a result file id (file-results-…)", param="after")
            done = await jobs.list_jobs(tenant, anchor, limit, status=s.Status.succeeded)
            out = []
            for job in done.data:
                _, content = await jobs.result_file(tenant, result_file_id(job.id))
                out.append(o.result_file_out(job, len(content), RESULTS_NAME))
            return o.page(out, done.has_more)
        if purpose not in (None, "fine-tune"):
            return o.page([])
        page = await files.list_files(tenant, after, limit)
        return o.page([o.file_out(f) for f in page.data], page.has_more)

    @get("/{file_id:str}", responses=errors(*AUTHED, 404))
    async def retrieve_file(self, file_id: str, tenant: str, jobs: JobService, files: FileService
                            ) -> o.OpenAIFile:
        """An upload, or a job's result file (a `result_files` id: purpose fine-tune-results)."""
        if result_file_job(file_id):
            job, content = await jobs.result_file(tenant, file_id)
            return o.result_file_out(job, len(content), RESULTS_NAME)
        return o.file_out(await files.get_file(tenant, file_id))

    @get("/{file_id:str}/content", responses=errors(*AUTHED, 404), media_type="application/octet-stream")
    async def file_content(self, file_id: str, tenant: str, jobs: JobService, files: FileService
                           ) -> Stream | Response[bytes]:
        """The file's bytes; a result file's are its job's per-step CSV (GET /jobs/{id}/results)."""
        if result_file_job(file_id):
            _, content = await jobs.result_file(tenant, file_id)
            return Response(content, media_type="text/csv")
        row = await files.row(tenant, file_id)
        return Stream(await files.open_content(row), media_type="application/octet-stream",
                      headers={"Content-Length": str(row.bytes)})

    @delete("/{file_id:str}", status_code=200, responses=errors(*AUTHED, 404, 409))
    async def delete_file(self, file_id: str, tenant: str, files: FileService, jobs: JobService) -> o.Deleted:
        """Refused (409) while a job that has not ended reads the file, and for a result file
        (it lives as long as its job)."""
        if result_file_job(file_id):
            await jobs.result_file(tenant, file_id)  # 404 for what this tenant cannot see
            raise refuse_delete(file_id)
        await files.delete(tenant, file_id)
        return o.Deleted(id=file_id, object="file")
