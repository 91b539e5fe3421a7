"""What the files API does: store an uploaded JSONL in the artifact bucket and record it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from collections.abc import Iterator
from typing import BinaryIO

import anyio

from service.errors import Conflict
from service.ids import new_id
from service.jobs import schema as s
from service.jobs.db import FileRow
from service.jobs.store import Store
from service.settings import Settings
from service.storage import ObjectStore


@dataclass
class FileService:
    settings: Settings
    store: Store
    objects: ObjectStore

    async def save(self, tenant: str, filename: str, fileobj: BinaryIO, size: int, sha256: str,
                   idempotency_key: str | None) -> tuple[s.File, bool]:
        """Upload, then record. A replayed Idempotency-Key returns the first file, created=False."""
        req_hash = hashlib.sha256(f"{sha256}:{filename}".encode()).hexdigest()
        found = await self.store.find_idempotent_file(tenant, idempotency_key, req_hash)
        if found is not None:
            return found, False
        bucket, file_id = self.settings.artifact_bucket, new_id("file")
        key = f"files/{file_id}.jsonl"
        await anyio.to_thread.run_sync(self.objects.put_fileobj, bucket, key, fileobj)
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
        missing object), then the object."""
        row = await self.store.file_row(tenant, file_id)
        if await self.store.file_in_use(tenant, file_id):
            raise Conflict(f"file {file_id} is used by a job that has not ended; cancel the job or "
                           "wait for it to end, then delete the file", param="file_id", code="file_in_use")
        await self.store.delete_file(tenant, file_id)
        await anyio.to_thread.run_sync(self.objects.delete, row.bucket, row.key)

    def content(self, row: FileRow) -> Iterator[bytes]:
        return self.objects.iter_bytes(row.bucket, row.key)
