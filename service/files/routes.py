"""/files: multipart upload of JSONL streamed into the artifact bucket as it arrives (nothing
spooled, memory bounded: service/storage/streaming.py), get, list, preview, delete. OpenAI's
/v1/files is service/api/v1_files.py: it also serves jobs' result files, so it sits above both."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated

from litestar import Controller, Request, delete, get, post
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import Parameter
from litestar.response import Response
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.contracts import schema as s
from service.db.pages import MAX_PAGE
from service.errors import InvalidRequest, PayloadTooLarge, Unprocessable
from service.files.service import FileService
from service.http_errors import AUTHED, errors
from service.settings import Settings

Limit = Annotated[int, Parameter(ge=1, le=MAX_PAGE)]
IdempotencyKey = Annotated[str | None, Parameter(header="Idempotency-Key", max_length=255)]


@dataclass
class MultipartUpload(Operation):
    """POST /files streams its multipart body itself, so the body is declared here."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(required=True, content={
            "multipart/form-data": OpenAPIMediaType(schema=Schema(
                type=OpenAPIType.OBJECT, required=["file"],
                properties={
                    "file": Schema(type=OpenAPIType.STRING, format="binary",
                                   description="the JSONL file (one part named 'file')"),
                    "purpose": Schema(type=OpenAPIType.STRING, enum=["fine-tune"],
                                      description="OpenAI's field: only 'fine-tune' (training data)"),
                }))})



class _Upload:
    """Receives multipart callbacks; collects the `file` part's bytes of each parsed request chunk
    in `ready`, which the handler hands on to the object store before it reads the next chunk."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ready: list[bytes] = []
        self.sha = hashlib.sha256()
        self.size = 0
        self.filename: str | None = None
        self.purpose: bytearray | None = None  # OpenAI's form field, if sent
        self.parts = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._in_file = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, a, b: self._header_field.extend(d[a:b]),
            "on_header_value": lambda d, a, b: self._header_value.extend(d[a:b]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._data,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._in_file = False
        self._in_purpose = False

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_done(self) -> None:
        _, opts = parse_options_header(self._headers.get("content-disposition", b""))
        if opts.get(b"name") == b"purpose":
            self.purpose = bytearray()
            self._in_purpose = True
        if opts.get(b"name") == b"file":
            if self.filename is not None:
                raise InvalidRequest("send exactly one 'file' part", param="file")
            self.filename = (opts.get(b"filename") or b"upload.jsonl").decode("utf-8", "replace")
            self._in_file = True

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._in_purpose and self.purpose is not None and len(self.purpose) < 64:
            self.purpose.extend(data[start:min(end, start + 64)])
        if not self._in_file:
            return
        self.size += end - start
        if self.size > self.limit:
            raise PayloadTooLarge(f"the file is larger than the {self.limit}-byte limit", param="file")
        chunk = data[start:end]
        self.sha.update(chunk)
        self.ready.append(chunk)


async def receive_upload(request: Request, tenant: str, files: FileService, settings: Settings,
                         idempotency_key: str | None) -> tuple[s.File, bool]:
    """Stream a multipart upload's `file` part into the artifact bucket (for /files and /v1/files)."""
    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in opts:
        raise InvalidRequest("upload the file as multipart/form-data with a 'file' part", param="file")
    limit = settings.max_upload_bytes
    announced = request.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit + (1 << 20):
        raise PayloadTooLarge(f"the file is larger than the {limit}-byte limit", param="file")
    upload = _Upload(limit)
    parser = MultipartParser(opts[b"boundary"], upload.callbacks())
    file_id, sink = files.begin_upload()
    try:
        try:
            async for chunk in request.stream():
                parser.write(chunk)
                for part in upload.ready:
                    await sink.write(part)
                upload.ready.clear()
            parser.finalize()
        except MultipartParseError as exc:
            raise InvalidRequest(f"the multipart body is malformed ({exc}); send one 'file' part",
                                 param="file") from None
        if upload.filename is None:
            raise InvalidRequest("the form has no 'file' part", param="file")
        if upload.purpose is not None and bytes(upload.purpose) != b"fine-tune":
            raise InvalidRequest("purpose must be 'fine-tune': tunedock stores training data only",
                                 param="purpose")
        if upload.size == 0:
            raise Unprocessable("the file is empty: upload a JSONL file with one example per line",
                                param="file", code="file_empty")
        await sink.finish()
    except BaseException:
        await sink.abort()
        raise
    return await files.record(tenant, file_id, sink, upload.filename, upload.size,
                              upload.sha.hexdigest(), idempotency_key)


class FilesController(Controller):
    path = "/files"
    tags = ["files"]

    # The handler enforces the settings' size limit itself while it streams.
    @post("/", request_max_body_size=None, operation_class=MultipartUpload,
          responses=errors(*AUTHED, 409, 413, 422))
    async def upload(self, request: Request, tenant: str, files: FileService, settings: Settings,
                     idempotency_key: IdempotencyKey = None) -> Response[s.File]:
        file, created = await receive_upload(request, tenant, files, settings, idempotency_key)
        return Response(file, status_code=201, headers={"Idempotent-Replayed": str(not created).lower()})

    @get("/", responses=errors(*AUTHED, 404))
    async def list_files(self, tenant: str, files: FileService, after: str | None = None,
                         limit: Limit = 20) -> s.Page:
        return await files.list_files(tenant, after, limit)

    @get("/{file_id:str}", responses=errors(*AUTHED, 404))
    async def get_file(self, file_id: str, tenant: str, files: FileService) -> s.File:
        return await files.get_file(tenant, file_id)

    @post("/{file_id:str}/preview", status_code=200, responses=errors(*AUTHED, 404, 422))
    async def preview_file(self, file_id: str, data: s.PreviewRequest, tenant: str,
                           files: FileService) -> s.FilePreview:
        """Check the whole file as a job on `base_model` would (every bad line, by number) and
        render its first `n_rows` examples with the model's chat template, split into trained
        and context text. Nothing is created; a file with bad lines answers 200, `valid: false`."""
        return await files.preview(tenant, file_id, data)

    @delete("/{file_id:str}", status_code=204, responses=errors(*AUTHED, 404, 409))
    async def delete_file(self, file_id: str, tenant: str, files: FileService) -> None:
        """Refused (409) while a job that has not ended reads the file."""
        await files.delete(tenant, file_id)
