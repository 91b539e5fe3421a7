"""One claimed export on one runner slot: write its spec, start the export child, watch it
(supervise.py, the same loop as training: messages, lease, stops), record its stages and result. Like a job: a runner that dies leaves the
lease to lapse and another runner starts the export again (exports are deterministic and take
minutes, so an attempt starts over rather than from a partial file)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog

from service.contracts import messages as m
from service.contracts import schema as s
from service.errors import LeaseLost
from service.exports.store import ExportLease, ExportStore
from service.jobs.locate import Locator
from service.jobs.store import Store
from service.runner.process import Child
from service.runner.spec import object_ref
from service.runner.supervise import supervise
from service.settings import Settings


@dataclass
class ExportRun:
    settings: Settings
    store: Store
    exports: ExportStore
    where: Locator
    export: s.Export
    owner: str
    gpu: str | None
    stopping: asyncio.Event
    log: Any = field(default=None)

    def __post_init__(self) -> None:
        self.log = structlog.get_logger().bind(export_id=self.export.id, attempt=self.export.attempt)
        self.lease = ExportLease(self.owner, self.export.attempt)
        self.done: m.ExportDone | None = None
        self.failed: m.Failed | None = None

    @property
    def work_dir(self) -> Path:
        return (Path(self.settings.data_dir).resolve() / "exports" / self.export.id
                / f"attempt-{self.export.attempt}")

    async def spec(self) -> m.ExportSpec | str:
        """The child's spec, or why there can be none."""
        job = await self.store.get_job(None, self.export.job_id)
        entry = self.settings.base_model(job.base_model)
        if entry is None:
            return f"base model {job.base_model!r} is no longer in the registry"
        adapter = await self.where.adapter_uri(None, job.id, self.export.checkpoint)
        if adapter is None:
            return f"job {job.id} has no checkpoint for epoch {self.export.checkpoint}"
        return m.ExportSpec(
            export_id=self.export.id, job_id=job.id, model=self.export.model,
            format=self.export.format, base_model_source=entry.source, adapter=object_ref(adapter),
            artifact_bucket=self.settings.artifact_bucket, output_prefix=f"exports/{self.export.id}",
            check_prompts=list(job.hyperparameters.eval_prompts), work_dir=str(self.work_dir / "work"))

    async def run(self) -> None:
        began = time.monotonic()
        spec = await self.spec()
        if isinstance(spec, str):
            await self._fail("export_failed", spec)
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        spec_path = self.work_dir / "spec.json"
        spec_path.write_bytes(msgspec.json.encode(spec))
        await self._abort_open_uploads()  # an earlier attempt's child may have died mid-upload
        child = await Child.start(self.settings, self.gpu, [str(spec_path)], self.work_dir / "child.log",
                                  module="service.exports")
        self.log.info("export child started", pid=child.proc.pid, format=spec.format.value)
        out = await supervise(
            child, self.settings, self.log, self.stopping,
            heartbeat=lambda: self.exports.heartbeat_export(self.export.id, self.lease,
                                                          self.settings.lease_seconds),
            record=self._record, on_runner_stop="terminate")
        code = out.code
        if out.lost:
            self.log.info("export no longer ours; child stopped")
            return
        await self._abort_open_uploads()
        seconds = time.monotonic() - began
        try:
            if self.done is not None and code == 0:
                d = self.done
                await self.exports.finish_export(
                    self.export.id, self.lease, bucket=d.bucket, key=d.key, filename=d.filename,
                    size=d.bytes, sha256=d.sha256, seconds=seconds, checks=d.checks,
                    modelfile=d.modelfile)
            elif self.stopping.is_set() or out.unrecorded:
                why = "runner stopping" if self.stopping.is_set() else "its progress could not be recorded"
                await self.exports.release_export(self.export.id, self.lease,
                                                f"{why}; the export will start again")
            elif code == m.EXIT_BAD_INPUT or self.export.attempt >= self.settings.max_attempts:
                failed = self.failed or m.Failed(code="export_failed",
                                                 message=f"the export child exited with {code}")
                await self._fail(failed.code, failed.message)
            else:
                reason = self.failed.message if self.failed else f"the export child exited with {code}"
                await self.exports.release_export(self.export.id, self.lease,
                                                f"export attempt {self.export.attempt} failed "
                                                f"({reason[:300]}); it will start again")
        except LeaseLost:
            self.log.warning("lease lost before the export's end was recorded")

    async def _fail(self, code: str, message: str) -> None:
        try:
            await self.exports.fail_export(self.export.id, self.lease, code, message)
        except LeaseLost:
            pass

    async def _abort_open_uploads(self) -> None:
        try:
            await asyncio.to_thread(self.where.objects.abort_uploads, self.settings.artifact_bucket,
                                    f"exports/{self.export.id}/")
        except Exception:  # noqa: BLE001 - a leftover costs storage, not correctness
            self.log.warning("could not abort uploads left open", exc_info=True)

    async def _record(self, msg: m.ChildMessage) -> None:
        match msg:
            case m.ExportStage(stage=stage):
                await self.exports.export_stage(self.export.id, self.lease, stage)
            case m.ExportDone():
                self.done = msg
            case m.Failed():
                self.failed = msg
                self.log.warning("export failed", code=msg.code, message=msg.message)
