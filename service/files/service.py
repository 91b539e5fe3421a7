"""What the files API does: store an uploaded JSONL in the artifact bucket and record it; check
and preview it for a base model."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio

from service.contracts import schema as s
from service.datasets.checked import CheckedFiles
from service.datasets.preview import preview_rows
from service.datasets.template import local_tokens
from service.datasets.validate import Options, validate_jsonl
from service.db.tables import FileRow
from service.errors import NotFound, Unprocessable
from service.files.store import FilesStore
from service.ids import new_id
from service.settings import Settings
from service.storage import ObjectStore
from service.storage.streaming import StreamingUpload


@dataclass
class FileService:
    settings: Settings
    store: FilesStore
    objects: ObjectStore
    # Shared with the JobService: a dry run and a preview reuse each other's file checks.
    checked: CheckedFiles = field(default_factory=CheckedFiles)

    async def list_files(self, tenant: str, after: str | None, limit: int) -> s.Page:
        return await self.store.list_files(tenant, after, limit)

    async def get_file(self, tenant: str, file_id: str) -> s.File:
        return await self.store.get_file(tenant, file_id)

    async def row(self, tenant: str, file_id: str) -> FileRow:
        return await self.store.file_row(tenant, file_id)

    def begin_upload(self) -> tuple[str, StreamingUpload]:
        """A new file's id and the upload its bytes are written to as they arrive."""
        file_id = new_id("file")
        return file_id, StreamingUpload(self.objects, self.settings.artifact_bucket,
                                        f"files/{file_id}.jsonl")

    async def record(self, tenant: str, file_id: str, upload: StreamingUpload, filename: str,
                     size: int, sha256: str, idempotency_key: str | None) -> tuple[s.File, bool]:
        """Record a finished upload. A replayed Idempotency-Key returns the first file
        (created=False) and drops this copy; the same key with other content is a 409."""
        bucket, key = upload.bucket, upload.key
        req_hash = hashlib.sha256(f"{sha256}:{filename}".encode()).hexdigest()
        try:
            found = await self.store.find_idempotent_file(tenant, idempotency_key, req_hash)
        except BaseException:
            await anyio.to_thread.run_sync(self.objects.delete, bucket, key)
            raise
        if found is not None:
            await anyio.to_thread.run_sync(self.objects.delete, bucket, key)
            return found, False
        row = FileRow(id=file_id, tenant=tenant, filename=filename[:512], bytes=size,
                      bucket=bucket, key=key, sha256=sha256)
        try:
            file, created = await self.store.insert_file(row, idempotency_key, req_hash)
        except BaseException:
            await anyio.to_thread.run_sync(self.objects.delete, bucket, key)
            raise
        if not created:  # a concurrent request with the same key won: drop our copy
            await anyio.to_thread.run_sync(self.objects.delete, bucket, key)
        return file, created

    async def delete(self, tenant: str, file_id: str) -> None:
        """Delete an upload no live job reads: the row first (so no row ever points at a
        missing object), then the object; the check and the row's delete are one transaction."""
        row = await self.store.delete_file(tenant, file_id)
        await anyio.to_thread.run_sync(self.objects.delete, row.bucket, row.key)

    def content(self, row: FileRow) -> Iterator[bytes]:
        return self.objects.iter_bytes(row.bucket, row.key)

    async def open_content(self, row: FileRow) -> Iterator[bytes]:
        """The upload's bytes, with the first block already read: a store that fails at the
        start is an error answer (503/404/403), not a 200 with no body. A body that breaks later
        is resumed by the store; one that cannot be aborts the answer, which the client sees
        as shorter than its Content-Length."""
        blocks = self.content(row)
        first = await anyio.to_thread.run_sync(next, blocks, None)
        return itertools.chain([] if first is None else [first], blocks)

    async def preview(self, tenant: str, file_id: str, req: s.PreviewRequest) -> s.FilePreview:
        """Validate the whole file as a job on `req.base_model` would, and render its first
        rows with that model's chat template. Bad lines are part of the answer, not an error."""
        row = await self.store.file_row(tenant, file_id)
        entry = self.settings.base_model(req.base_model)
        if entry is None:
            known = ", ".join(m.alias for m in self.settings.base_models) or "none configured"
            raise NotFound(f"base_model {req.base_model!r} is not in the registry ({known})",
                           param="base_model", code="model_not_found")
        tokens = local_tokens(entry.local_path)
        if tokens is None:
            raise Unprocessable(f"base model {req.base_model!r} has no local tokenizer, so its chat "
                                "template cannot be rendered here; a job on it still trains",
                                param="base_model", code="preview_unavailable")
        options = Options(max_seq_length=req.max_seq_length, train_on_inputs=req.train_on_inputs,
                          method=req.method)

        def check() -> s.FilePreview:
            limit = self.settings.max_line_bytes
            # The key is the dry run's (service.jobs.service._validate_object), so they share it.
            report = self.checked.report((row.bucket, row.key, req.base_model, None, options),
                                         lambda: validate_jsonl(self.content(row), tokens, limit, options))
            rows = preview_rows(self.content(row), tokens, limit, req.n_rows, req.train_on_inputs,
                                req.max_seq_length) if report.n_examples else []
            return s.FilePreview(
                file_id=file_id, base_model=req.base_model, valid=report.ok, format=report.format,
                n_examples=report.n_examples, n_errors=report.n_errors,
                errors=[s.ErrorInfo(code="invalid_line", message=e.message, line=e.line)
                        for e in report.errors],
                message=None if report.ok else report.failure_message(),
                warnings=report.warnings, rows=rows)

        return await anyio.to_thread.run_sync(check)
