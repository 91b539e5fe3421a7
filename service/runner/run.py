"""One claimed job on one runner slot: build the spec, start the training child (or hand it to
the slot's warm one), watch it (supervise.py: messages, lease, stops), then act on how it ended.
The parts: spec.py (what the child is told), process.py (the child as a process), report.py
(what is written), policy.py (what happens next)."""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog

from service.contracts import messages as m
from service.contracts import schema as s
from service.errors import LeaseLost, NotFound
from service.jobs.locate import Locator
from service.jobs.store import Lease, Store
from service.runner.placement import Device, gpu_memory
from service.runner.policy import Attempt, decide
from service.runner.process import Child, Template
from service.runner.report import Reporter
from service.runner.spec import build_spec
from service.runner.supervise import supervise
from service.settings import Settings


@dataclass
class JobRun:
    settings: Settings
    store: Store
    where: Locator
    job: s.Job
    owner: str
    gpu: str | None
    stopping: asyncio.Event
    warm: Child | None = None  # a child that has imported the training stack, if the slot has one
    template: Template | None = None  # a CPU slot's fork server: retries fork from it too
    device: Device | None = None  # the device it shares with other jobs, and its memory budget there
    # A job on several devices: all of them (`device` first), one rank each; and why that many.
    gang: list[Device] = field(default_factory=list)
    ranks_reason: str | None = None
    log: Any = field(default=None)

    def __post_init__(self) -> None:
        if not self.gang and self.device is not None:
            self.gang = [self.device]
        self.log = structlog.get_logger().bind(job_id=self.job.id, attempt=self.job.attempt)
        self.lease = Lease(self.owner, self.job.attempt)
        self.report = Reporter(self.store, self.job, self.lease, self.log)

    @property
    def work_dir(self) -> Path:
        return Path(self.settings.data_dir).resolve() / "runs" / self.job.id / f"attempt-{self.job.attempt}"

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            await asyncio.to_thread(self._clean_work_dir)

    def _clean_work_dir(self) -> None:
        """The attempt's folder holds a copy of the training data and the Trainer's saves, all
        in the object store by now: only the children's logs stay, for a person to read."""
        if not self.work_dir.is_dir():
            return
        for path in self.work_dir.iterdir():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.suffix != ".log":
                path.unlink(missing_ok=True)

    async def _run(self) -> None:
        began = time.monotonic()
        micro_batch: int | None = None
        for oom_retry in range(self.settings.max_oom_retries + 1):
            budget = await self._place(oom_retry)
            try:
                spec = await build_spec(self.settings, self.store, self.where, self.job, micro_batch,
                                        self.work_dir, budget,
                                        self.device.cpu_threads if self.device is not None else None,
                                        ranks=max(1, len(self.gang)))
            except (LookupError, NotFound) as exc:
                await self.report.fail("training_error", str(exc))
                return
            attempt = await self._spawn(spec, oom_retry)
            decision = decide(attempt, stopping=self.stopping.is_set(), oom_retry=oom_retry,
                              max_oom_retries=self.settings.max_oom_retries, micro_batch=micro_batch,
                              job_attempt=self.job.attempt, max_attempts=self.settings.max_attempts)
            match decision.action:
                case "forget":
                    self.log.info("job no longer ours; child stopped")
                case "pause":
                    await self.report.pause(refund=decision.refund)
                case "release":
                    await self.report.release("runner stopping; the job will resume from its "
                                              "latest checkpoint", refund=decision.refund)
                case "succeed":
                    assert attempt.result is not None
                    await self.report.succeed(attempt.result)
                    # Only a whole run in one go says how fast this device trains this shape.
                    if oom_retry == 0 and spec.resume_from is None:
                        await self.report.calibrate(attempt.result, time.monotonic() - began)
                case "retry_smaller":
                    try:
                        await self.report.smaller_micro_batch(decision, oom_retry)
                    except LeaseLost:  # the job went elsewhere meanwhile: no retry here
                        return
                    micro_batch = decision.micro_batch
                    continue
                case "retry_elsewhere":
                    assert decision.error is not None
                    await self.report.retry_elsewhere(decision.error)
                case "fail":
                    assert decision.error is not None
                    await self.report.fail(decision.error.code, decision.error.message)
            return

    async def _place(self, oom_retry: int) -> int | None:
        """The memory this attempt's child may plan with on its device, said in an event with the
        jobs beside it. A retry reads the device again: its neighbours may have come or gone."""
        device = self.device
        if device is None:
            return None
        exclusive = len(self.gang) > 1
        if oom_retry:  # what the failed plan reserved is the retry's to re-plan
            async with device.lock:
                readings = await asyncio.to_thread(gpu_memory) if device.gpu is not None else {}
                budgets = [b for b in [await d.budget(exclude=self.job.id, readings=readings) for d in self.gang]
                           if b is not None]
                budget = min(budgets) if budgets else None
                for each in self.gang:
                    each.hold(self.job.id, None, budget, exclusive=exclusive)
        else:
            held = device.held.get(self.job.id)
            budget = held.budget if held is not None else None
        neighbours = device.neighbours(self.job.id)
        await self.report.placed([d.name for d in self.gang], [d.label for d in self.gang],
                                 neighbours, budget, self.ranks_reason)
        return budget

    async def _abort_open_uploads(self, spec: m.TrainingSpec) -> None:
        """A child killed in the middle of a large upload (SIGKILL, OOM, a dead runner) leaves a
        multipart upload open under the job's prefix. While this attempt holds the lease and no
        child of it is running, any upload open there is such a leftover."""
        try:
            aborted = await asyncio.to_thread(self.where.objects.abort_uploads, spec.artifact_bucket,
                                              spec.output_prefix + "/")
        except Exception:  # noqa: BLE001 - best effort: a leftover costs storage, not correctness
            self.log.warning("could not abort uploads left open", exc_info=True)
            return
        if aborted:
            self.log.info("aborted uploads left open by an earlier child", count=aborted)

    async def _spawn(self, spec: m.TrainingSpec, oom_retry: int) -> Attempt:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.job.attempt > 1 and oom_retry == 0:  # an earlier attempt's child may have died mid-upload
            await self._abort_open_uploads(spec)
        spec_path = self.work_dir / f"spec-{oom_retry}.json"
        spec_path.write_bytes(msgspec.json.encode(spec))
        log_path = self.work_dir / f"child-{oom_retry}.log"
        child = await self._start_child(spec, spec_path, log_path)
        for each in self.gang:
            each.started(self.job.id, child.proc.pid)
        attempt = Attempt()
        started = time.monotonic()
        out = await supervise(
            child, self.settings, self.log, self.stopping,
            heartbeat=lambda: self.store.heartbeat(self.job.id, self.lease, self.settings.lease_seconds),
            record=lambda msg: self._record(msg, attempt, started),
            on_runner_stop="ask", pause_requested=lambda: self.store.pause_requested(self.job.id))
        attempt.code, attempt.lost = out.code, out.lost
        attempt.pausing, attempt.unrecorded = out.pausing, out.unrecorded
        if not attempt.lost:  # once fenced, the prefix belongs to the attempt that has the job
            await self._abort_open_uploads(spec)
        return attempt

    async def _start_child(self, spec: m.TrainingSpec, spec_path: Path, log_path: Path) -> Child:
        """The attempt's child: the launcher of its ranks, the slot's warm child (or one forked
        from the slot's template), or a child started now."""
        if spec.ranks > 1:  # started now: a warm child is one rank's, and stays the slot's
            child = await Child.start(self.settings, self._gpus(),
                                      ["--ranks", str(spec.ranks), str(spec_path)], log_path)
            self.log.info("ranks started", pid=child.proc.pid, ranks=spec.ranks, gpus=self._gpus())
            return child
        child, self.warm = self.warm, None
        if child is None and self.template is not None and spec.backend == "auto":
            child = await self.template.fork(self.settings, log_path)  # an OOM retry: imported, fast
        # A warm child imported for backend "auto"; Unsloth's patches cannot be undone.
        if child is not None and spec.backend == "auto" and await child.hand(spec_path, log_path):
            self.log.info("job handed to the warm child", pid=child.proc.pid, gpu=self.gpu)
            return child
        if child is not None:
            await child.close()
        child = await Child.start(self.settings, self.gpu, [str(spec_path)], log_path)
        self.log.info("child started", pid=child.proc.pid, gpu=self.gpu,
                      max_micro_batch=spec.max_micro_batch_size)
        return child

    def _gpus(self) -> str | None:
        """CUDA_VISIBLE_DEVICES for the child: its GPU, or its ranks' GPUs (rank r takes the r-th)."""
        gpus = [d.gpu for d in self.gang if d.gpu is not None]
        return ",".join(gpus) if gpus else self.gpu

    async def _record(self, msg: m.ChildMessage, attempt: Attempt, started: float) -> None:
        await self.report.handle(msg, attempt, started)
        if isinstance(msg, m.Planned):  # (per rank: each of its devices holds the same)
            for each in self.gang:
                each.planned(self.job.id, msg.plan)
