"""Where a job's inputs and adapters are, for the API (checks, dry runs, validation) and the runner
(the training spec, an export's adapter) alike: a file- id or s3:// URI to (bucket, key) under the
tenant's grants, and a job's final adapter or epoch checkpoint to its s3:// prefix."""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from service.errors import NotFound
from service.jobs.store import Store
from service.settings import Settings
from service.storage import ObjectStore, is_safe_key, parse_s3_uri


@dataclass
class Locator:
    settings: Settings
    store: Store
    objects: ObjectStore

    async def adapter_uri(self, tenant: str | None, job_id: str, epoch: int | None) -> str | None:
        """Where a job's adapter is (s3://, no trailing slash): its final one, or epoch's
        checkpoint; None when it has no checkpoint for that epoch."""
        if epoch is None:
            return f"s3://{self.settings.artifact_bucket}/jobs/{job_id}/adapter"
        ckpt = next((c for c in await self.store.list_checkpoints(tenant, job_id)
                     if c.epoch == epoch), None)
        return ckpt.uri.rstrip("/") if ckpt else None

    async def locate(self, tenant: str, ref: str, param: str) -> tuple[str, str]:
        """(bucket, key) of a training/validation file given as a file- id or an s3:// URI.

        A file of another tenant, a URI into the artifact bucket (uploads are reached by file-
        ids only) or into a bucket this tenant has no grant for, and a missing object all answer
        with the same 404, so a refusal tells nothing about what exists."""
        if ref.startswith("file-"):
            try:
                row = await self.store.file_row(tenant, ref)
            except NotFound:
                raise unreadable(ref, param) from None
            return row.bucket, row.key
        bucket, key = parse_s3_uri(ref, param)
        if not is_safe_key(key) or not self.settings.may_read(tenant, bucket, key):
            raise unreadable(ref, param)
        return bucket, key

    async def check_readable(self, tenant: str, ref: str, param: str) -> None:
        bucket, key = await self.locate(tenant, ref, param)
        if await anyio.to_thread.run_sync(self.objects.size, bucket, key) is None:
            raise unreadable(ref, param)


def unreadable(ref: str, param: str) -> NotFound:
    return NotFound(f"{param} {ref!r} does not exist or this API key cannot read it", param=param,
                    code="file_not_found")
