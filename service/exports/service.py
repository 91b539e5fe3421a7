"""Exports, the API's side: what may be exported (a succeeded job, an epoch it checkpointed, a
base model still in the registry), and the exported file's bytes, whole or a range."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from service.contracts import schema as s
from service.errors import Conflict, NotFound, Unprocessable
from service.exports.store import ExportStore
from service.ids import model_name
from service.jobs.store import Store
from service.settings import Settings


class ExportService:
    """`store` is the jobs' (an export is of a job the tenant owns); `exports` writes exports."""

    def __init__(self, settings: Settings, store: Store, exports: ExportStore, objects: Any) -> None:
        self.settings, self.store, self.exports, self.objects = settings, store, exports, objects

    async def get(self, tenant: str, export_id: str) -> s.Export:
        return await self.exports.get_export(tenant, export_id)

    async def for_job(self, tenant: str, job_id: str) -> list[s.Export]:
        await self.store.get_job(tenant, job_id)  # 404 for a job this tenant cannot see
        return await self.exports.list_exports(tenant, job_id)

    async def located(self, tenant: str, export_id: str) -> tuple[s.Export, str, str, str | None]:
        """(export, bucket, key, Modelfile text or None) of a succeeded export."""
        return await self.exports.export_object(tenant, export_id)

    async def request(self, tenant: str, job_id: str, req: s.ExportCreate) -> tuple[s.Export, bool]:
        """Queue an export (or find the one of the same kind): (export, created)."""
        job = await self.store.get_job(tenant, job_id)
        if job.status is not s.Status.succeeded or job.fine_tuned_model is None:
            raise Conflict(f"job {job_id} is {job.status.value}; only a succeeded job can be exported",
                           param="job_id", code="job_not_succeeded")
        if self.settings.base_model(job.base_model) is None:
            raise Unprocessable(f"job {job_id} was trained on {job.base_model!r}, which is no longer "
                                "in the registry", param="job_id", code="model_not_found")
        name = job.fine_tuned_model
        if req.checkpoint is not None:
            epochs = [c.epoch for c in await self.store.list_checkpoints(tenant, job_id)]
            if req.checkpoint not in epochs:
                raise NotFound(f"job {job_id} has no checkpoint for epoch {req.checkpoint} "
                               f"(it has {epochs or 'none'})", param="checkpoint")
            name = model_name(job.base_model, job.suffix, job.id, req.checkpoint)
        return await self.exports.create_export(tenant, job_id, name, req.format, req.checkpoint)

    async def content(self, bucket: str, key: str,
                      wanted: tuple[int, int] | None) -> AsyncIterator[bytes]:
        """The file's bytes (start..end inclusive when `wanted`), read on a thread (boto3 blocks).
        The object is opened and its first chunk read before this returns, so a store that
        fails answers an error, not a response cut short after its headers."""
        it = iter(self.objects.iter_range(bucket, key, *wanted) if wanted
                  else self.objects.iter_bytes(bucket, key))
        done = object()
        first = await asyncio.to_thread(next, it, done)

        async def chunks() -> AsyncIterator[bytes]:
            chunk = first
            while chunk is not done:
                yield chunk  # type: ignore[misc]
                chunk = await asyncio.to_thread(next, it, done)

        return chunks()
