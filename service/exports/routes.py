"""Exports: POST /jobs/{id}/exports queues one (a runner makes it), GET /exports/{id} says how it
stands, GET /exports/{id}/content downloads it (Range supported), GET /exports/{id}/modelfile
gives a GGUF's Ollama Modelfile."""

from __future__ import annotations

import re
from typing import Annotated

from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import Response, Stream

from service.contracts import schema as s
from service.errors import NotFound, RangeNotSatisfiable
from service.exports.service import ExportService
from service.http_errors import AUTHED, errors

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
RangeHeader = Annotated[str | None, Parameter(
    header="Range", description="one byte range, `bytes=START-END`, `bytes=START-` or `bytes=-N`")]


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (start, end) a Range header asks for, None for the whole file (no header,
    or several ranges, which RFC 9110 lets a server answer with the whole); 416 if it misses."""
    if not header or "," in header:
        return None
    m = _RANGE.match(header.strip())
    if m is None or m.groups() == ("", ""):
        raise RangeNotSatisfiable(f"Range {header!r} is not `bytes=START-END`", param="Range")
    first, last = m.groups()
    if first == "":  # the last N bytes
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise RangeNotSatisfiable(f"Range {header!r} is outside the file's {size} bytes",
                                  param="Range")
    return start, end


def provide_exports(state: State) -> ExportService:
    return state.exports


class ExportsController(Controller):
    tags = ["exports"]

    @post("/jobs/{job_id:str}/exports", responses={**errors(*AUTHED, 404, 409, 422), 200: ResponseSpec(
        data_container=s.Export, generate_examples=False,
        description="an export of this job, format and checkpoint already exists (queued, running "
                    "or succeeded): that one")})
    async def create_export(self, job_id: str, data: s.ExportCreate, tenant: str,
                            exports: ExportService) -> Response[s.Export]:
        """Queue an export of a succeeded job's final adapter, or of one epoch's checkpoint
        (201). A runner merges it into the 16-bit base and, for the GGUF formats, converts and
        quantizes it with llama.cpp; every export is checked before it is stored (`checks`)."""
        export, created = await exports.request(tenant, job_id, data)
        return Response(export, status_code=201 if created else 200)

    @get("/jobs/{job_id:str}/exports", responses=errors(*AUTHED, 404))
    async def list_exports(self, job_id: str, tenant: str, exports: ExportService) -> s.Page:
        """This job's exports, oldest first."""
        items = await exports.for_job(tenant, job_id)
        return s.Page(data=items, has_more=False, last_id=items[-1].id if items else None)

    @get("/exports/{export_id:str}", responses=errors(*AUTHED, 404))
    async def get_export(self, export_id: str, tenant: str, exports: ExportService) -> s.Export:
        return await exports.get(tenant, export_id)

    @get("/exports/{export_id:str}/content", media_type="application/octet-stream",
         responses={**errors(*AUTHED, 404, 409), 206: ResponseSpec(
             data_container=bytes, media_type="application/octet-stream", generate_examples=False,
             description="the byte range asked for (Content-Range says which)"),
             416: ResponseSpec(data_container=s.ErrorBody, generate_examples=False,
                               description="the Range is malformed or outside the file")})
    async def download(self, export_id: str, tenant: str, exports: ExportService,
                       range_: RangeHeader = None) -> Stream:
        """The exported file: a .gguf, or a .tar of the merged model's folder. Range resumes a
        download; ETag is the file's sha256."""
        export, bucket, key, _ = await exports.located(tenant, export_id)
        size = export.bytes or 0
        wanted = byte_range(range_, size)
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{export.sha256}"',
                   "Content-Disposition": f'attachment; filename="{export.filename}"'}
        if wanted is None:
            return Stream(await exports.content(bucket, key, None), status_code=200,
                          media_type="application/octet-stream",
                          headers={**headers, "Content-Length": str(size)})
        start, end = wanted
        return Stream(await exports.content(bucket, key, (start, end)), status_code=206,
                      media_type="application/octet-stream",
                      headers={**headers, "Content-Length": str(end - start + 1),
                               "Content-Range": f"bytes {start}-{end}/{size}"})

    @get("/exports/{export_id:str}/modelfile", media_type="text/plain",
         responses=errors(*AUTHED, 404, 409))
    async def modelfile(self, export_id: str, tenant: str, exports: ExportService) -> Response[str]:
        """A GGUF export's Ollama Modelfile (`FROM ./<file>.gguf`, the chat template, the stop
        tokens): save it beside the file and run `ollama create NAME -f Modelfile`."""
        export, _, _, text = await exports.located(tenant, export_id)
        if text is None:
            raise NotFound(f"export {export_id} is {export.format.value}, which has no Modelfile; "
                           "GGUF exports have one", param="export_id")
        return Response(text, media_type="text/plain")

