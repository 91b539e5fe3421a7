"""One attempt of one job: spawn the training child, heartbeat the lease, persist what the child
reports, retry out-of-memory with a smaller micro-batch, and set the job's final status."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec
import structlog

from service.errors import InvalidTransition, LeaseLost, NotFound
from service.ids import model_name
from service.jobs import schema as s
from service.jobs.db import ThroughputRow
from service.jobs.deployments import deployment_request
from service.jobs.estimate import Throughput, calibration_key
from service.jobs.service import JobService
from service.jobs.store import Lease, Store
from service.settings import Settings

EXIT_OK, EXIT_BAD_INPUT, EXIT_OOM, EXIT_STOPPED = 0, 2, 3, 4


@dataclass
class Attempt:
    """What one child process reported."""

    code: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    lost: bool = False  # cancelled, or the lease went to someone else
    pausing: bool = False  # the user asked for a pause; the child was told to save and stop


def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


@dataclass
class Child:
    """A training child process and the read end of its events pipe."""

    proc: asyncio.subprocess.Process
    events_fd: int

    @classmethod
    async def start(cls, settings: Settings, gpu: str | None, args: list[str], log_path: Path,
                    warm: bool = False) -> Child:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, "TUNEDOCK_EVENTS_FD": str(write_fd), "PYTHONUNBUFFERED": "1"}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        limit = settings.training_memory_limit_bytes

        def limit_memory() -> None:  # runs in the child before exec
            if limit:
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "service.training", *args,
                stdin=asyncio.subprocess.PIPE if warm else asyncio.subprocess.DEVNULL,
                stdout=log_file, stderr=log_file, pass_fds=(write_fd,), env=env,
                start_new_session=True, preexec_fn=limit_memory)
        os.close(write_fd)
        return cls(proc, read_fd)

    @classmethod
    async def warm_up(cls, settings: Settings, gpu: str | None) -> Child:
        """A child that imports the training stack now and waits for a job on stdin."""
        log_path = Path(settings.data_dir).resolve() / "runs" / f"warm-{gpu or 'cpu'}.log"
        return await cls.start(settings, gpu, ["--warm"], log_path, warm=True)

    async def hand(self, spec_path: Path, log_path: Path) -> bool:
        """Give a warm child its job; False if it is gone."""
        if self.proc.returncode is not None or self.proc.stdin is None:
            return False
        try:
            self.proc.stdin.write(msgspec.json.encode({"spec": str(spec_path), "log": str(log_path)})
                                  + b"\n")
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            return False
        self.proc.stdin.close()
        return True

    async def close(self) -> None:
        """An unused warm child: closing stdin tells it to exit."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            _signal(self.proc, signal.SIGKILL)
            await self.proc.wait()
        os.close(self.events_fd)


@dataclass
class JobRun:
    settings: Settings
    store: Store
    jobs: JobService
    job: s.Job
    owner: str
    gpu: str | None
    stopping: asyncio.Event
    warm: Child | None = None  # a child that has imported the training stack, if the slot has one
    log: Any = field(default=None)

    def __post_init__(self) -> None:
        self.log = structlog.get_logger().bind(job_id=self.job.id, attempt=self.job.attempt)
        self.lease = Lease(self.owner, self.job.attempt)

    # -- the spec -------------------------------------------------------------------------
    async def build_spec(self, max_micro_batch: int | None) -> s.TrainingSpec:
        job = self.job
        tenant = await self.store.job_tenant(job.id)
        bucket, key = await self.jobs.locate(tenant, job.training_file, "training_file")
        validation = None
        if job.validation_file:
            vb, vk = await self.jobs.locate(tenant, job.validation_file, "validation_file")
            validation = s.ObjectRef(bucket=vb, key=vk)
        # Resume from whichever is later: the last epoch checkpoint or the last resume point.
        points = [(c.step, c.uri) for c in await self.store.list_checkpoints(None, job.id)]
        if (point := await self.store.resume_point(job.id)) is not None:
            points.append((point["step"], point["uri"]))
        resume = None
        if points:
            rb, _, rk = max(points)[1].removeprefix("s3://").partition("/")
            resume = s.ObjectRef(bucket=rb, key=rk.rstrip("/"))
        entry = self.settings.base_model(job.base_model)
        if entry is None:
            raise LookupError(f"base model {job.base_model!r} is no longer in the registry")
        init_adapter = None
        if job.continued_from is not None:
            ab, _, ak = job.continued_from.adapter.removeprefix("s3://").partition("/")
            init_adapter = s.ObjectRef(bucket=ab, key=ak)
        split = job.dataset.n_validation if job.dataset and job.dataset.validation_source == "split" else 0
        return s.TrainingSpec(
            job_id=job.id, base_model=job.base_model, base_model_source=entry.source,
            hyperparameters=job.hyperparameters, method=job.method,
            train=s.ObjectRef(bucket=bucket, key=key), validation=validation,
            validation_rows=split,
            # Lengths estimated from bytes (no local tokenizer) could under-plan memory.
            example_lengths=(job.dataset.lengths if job.dataset and not job.dataset.tokens_estimated
                             else None),
            artifact_bucket=self.settings.artifact_bucket,
            output_prefix=f"jobs/{job.id}", resume_from=resume, init_adapter=init_adapter,
            max_micro_batch_size=max_micro_batch,
            work_dir=str(self.work_dir / "work"), deterministic=self.settings.deterministic_training,
        )

    @property
    def work_dir(self) -> Path:
        return Path(self.settings.data_dir).resolve() / "runs" / self.job.id / f"attempt-{self.job.attempt}"

    # -- the attempt ----------------------------------------------------------------------
    async def run(self) -> None:
        began = time.monotonic()
        micro_batch: int | None = None
        for oom_retry in range(self.settings.max_oom_retries + 1):
            try:
                spec = await self.build_spec(micro_batch)
            except (LookupError, NotFound) as exc:
                await self._fail("training_error", str(exc))
                return
            attempt = await self._spawn(spec, oom_retry)
            if attempt.lost:
                self.log.info("job no longer ours; child stopped")
                return
            if attempt.code == EXIT_STOPPED and attempt.pausing:
                await self._pause()
                return
            if attempt.code == EXIT_STOPPED or (self.stopping.is_set() and attempt.code != EXIT_OK):
                await self.store.release(self.job.id, self.lease,
                                         "runner stopping; the job will resume from its latest checkpoint")
                return
            if attempt.code == EXIT_OK and attempt.result is not None:
                await self._succeed(attempt.result)
                # Only a whole run in one go says how fast this device trains this shape.
                if oom_retry == 0 and spec.resume_from is None:
                    await self._calibrate(attempt.result, time.monotonic() - began)
                return
            error = attempt.error or {"code": "training_error",
                                      "message": f"the training process exited with {attempt.code}"}
            if attempt.code == EXIT_OOM and oom_retry < self.settings.max_oom_retries:
                current = (attempt.plan or {}).get("micro_batch_size") or micro_batch or 1
                if current > 1:
                    # A cap, not a size: the retry's plan takes the largest micro-batch under it
                    # that fits the memory free when it starts, down to 1.
                    micro_batch = max(1, current // 2)
                    try:
                        await self.store.add_event(
                            self.job.id, "oom_retry", level="warning",
                            message=f"out of memory at micro-batch {current} ({error['message']}); "
                                    f"retrying at micro-batch {micro_batch} or less from the latest "
                                    "checkpoint",
                            data={"micro_batch_size": micro_batch, "retry": oom_retry + 1,
                                  "failed_micro_batch_size": current, "error": error},
                            lease=self.lease)
                    except LeaseLost:  # the job went elsewhere meanwhile: no retry here
                        return
                    continue
            if attempt.code not in (EXIT_BAD_INPUT, EXIT_OOM) and self.job.attempt < self.settings.max_attempts:
                await self.store.add_event(self.job.id, "attempt_failed", error["message"], "warning",
                                           data={"error": error, "attempt": self.job.attempt})
                await self.store.release(self.job.id, self.lease,
                                         f"attempt {self.job.attempt} failed; retrying from the latest checkpoint")
                return
            await self._fail(error["code"], error["message"])
            return

    async def _spawn(self, spec: s.TrainingSpec, oom_retry: int) -> Attempt:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        spec_path = self.work_dir / f"spec-{oom_retry}.json"
        spec_path.write_bytes(msgspec.json.encode(spec))
        log_path = self.work_dir / f"child-{oom_retry}.log"
        child, self.warm = self.warm, None
        # A warm child imported for backend "auto"; Unsloth's patches cannot be undone.
        if child is not None and spec.backend == "auto" and await child.hand(spec_path, log_path):
            self.log.info("job handed to the warm child", pid=child.proc.pid, gpu=self.gpu)
        else:
            if child is not None:
                await child.close()
            child = await Child.start(self.settings, self.gpu, [str(spec_path)], log_path)
            self.log.info("child started", pid=child.proc.pid, gpu=self.gpu,
                          max_micro_batch=spec.max_micro_batch_size)
        proc = child.proc
        attempt = Attempt()
        reader = asyncio.create_task(self._read_events(child.events_fd, attempt, proc))
        watcher = asyncio.create_task(self._watch(proc, attempt))
        try:
            attempt.code = await proc.wait()
            await reader
        finally:
            watcher.cancel()
            reader.cancel()
            if proc.returncode is None:
                _signal(proc, signal.SIGKILL)
        return attempt

    async def _watch(self, proc: asyncio.subprocess.Process, attempt: Attempt) -> None:
        """Heartbeat the lease; stop the child on cancel, lost lease or runner shutdown."""
        stop_sent = False
        while proc.returncode is None:
            try:
                await asyncio.wait_for(self.stopping.wait(), self.settings.heartbeat_seconds)
            except TimeoutError:
                pass
            if self.stopping.is_set() and not stop_sent:
                # Graceful: the child finishes any checkpoint upload, stops at the next step.
                _signal(proc, signal.SIGTERM)
                stop_sent = True
            try:
                ours = await self.store.heartbeat(self.job.id, self.lease, self.settings.lease_seconds)
            except Exception:  # noqa: BLE001 - a database blip; the lease has slack
                self.log.warning("heartbeat failed", exc_info=True)
                continue
            if not ours:
                attempt.lost = True
                await self._terminate(proc)
                return
            if not stop_sent and await self.store.pause_requested(self.job.id):
                # The child saves a resume point at the next step boundary, then exits.
                _signal(proc, signal.SIGTERM)
                attempt.pausing = stop_sent = True

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        _signal(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.settings.cancel_grace_seconds)
        except TimeoutError:
            _signal(proc, signal.SIGKILL)

    async def _read_events(self, fd: int, attempt: Attempt, proc: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()
        stream = asyncio.StreamReader(limit=1 << 20, loop=loop)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(fd, "rb", 0))
        started = time.monotonic()
        try:
            while line := await stream.readline():
                try:
                    msg = msgspec.json.decode(line)
                except msgspec.DecodeError:
                    continue
                try:
                    await self._handle(msg, attempt, started)
                except LeaseLost:
                    # Fenced: the job went to another attempt while this runner could not
                    # heartbeat (frozen, partitioned). Nothing more of this child is recorded.
                    self.log.warning("lease lost; stopping the child")
                    attempt.lost = True
                    await self._terminate(proc)
                    return
        finally:
            transport.close()

    async def _handle(self, msg: dict[str, Any], attempt: Attempt, started: float) -> None:
        kind = msg.get("type")
        job_id = self.job.id
        if kind == "started":
            await self.store.add_event(job_id, "backend",
                                       f"training on {msg['device']} with the {msg['backend']} backend",
                                       data={k: msg[k] for k in ("backend", "device", "versions")},
                                       lease=self.lease)
        elif kind == "plan":
            attempt.plan = msg["plan"]
            plan = msg["plan"]
            await self.store.update_job(job_id, plan=plan, lease=self.lease)
            await self.store.add_event(
                job_id, "plan", f"memory plan: micro-batch {plan['micro_batch_size']} x "
                f"{plan['gradient_accumulation_steps']} accumulation, about "
                f"{plan['estimated_peak_bytes'] / 2**30:.2f} GiB peak", data=plan, lease=self.lease)
        elif kind == "loaded":
            await self.store.add_event(job_id, "loaded", f"model loaded in {msg['seconds']} s",
                                       data={"seconds": msg["seconds"]}, lease=self.lease)
        elif kind == "train_begin":
            await self.store.add_event(job_id, "train_begin",
                                       f"training loop started at step {msg.get('step', 0)}",
                                       data={"step": msg.get("step", 0)}, lease=self.lease)
        elif kind == "progress":
            await self._progress(msg, started)
        elif kind == "checkpoint":
            uri = f"s3://{msg['bucket']}/{msg['prefix']}/"
            await self.store.record_checkpoint(job_id, msg["epoch"], msg["step"], uri, msg["metrics"],
                                               lease=self.lease, samples=msg.get("samples"))
        elif kind == "resume_point":
            await self.store.set_resume_point(job_id, self.lease, f"s3://{msg['bucket']}/{msg['prefix']}/",
                                              msg["step"], msg["epoch"])
        elif kind in ("warning", "resumed", "stopped", "continued"):
            text = msg.get("message") or f"resumed from {msg.get('checkpoint')}"
            await self.store.add_event(job_id, kind, text, "warning" if kind == "warning" else "info",
                                       data={k: v for k, v in msg.items() if k not in ("type", "time")},
                                       lease=self.lease)
        elif kind == "result":
            attempt.result = msg
        elif kind == "error":
            attempt.error = {"code": msg.get("code", "training_error"), "message": msg.get("message", "")}

    async def _progress(self, msg: dict[str, Any], started: float) -> None:
        step, total = msg.get("step") or 0, msg.get("total_steps")
        progress = {"epoch": msg.get("epoch") or 0.0, "step": step, "total_steps": total,
                    "loss": msg.get("loss")}
        fields: dict[str, Any] = {"progress": progress}
        if msg.get("trained_tokens") is not None:
            fields["trained_tokens"] = msg["trained_tokens"]
        elapsed = time.monotonic() - started
        if step and total:
            fields["estimated_finish"] = datetime.fromtimestamp(
                time.time() + elapsed / step * max(0, total - step), tz=timezone.utc)
        await self.store.update_job(self.job.id, lease=self.lease, **fields)
        if msg.get("loss") is not None:
            data = {k: msg.get(k) for k in ("step", "total_steps", "epoch", "loss", "learning_rate",
                                             "tokens_per_second", "step_seconds", "gpu_memory_bytes",
                                             "trained_tokens", "supervised_tokens", "rewards")}
            await self.store.add_event(self.job.id, "metrics",
                                       f"step {step}/{total}: loss {msg['loss']:.4f}",
                                       data={**data, "attempt": self.job.attempt}, lease=self.lease)

    # -- endings --------------------------------------------------------------------------
    async def _succeed(self, result: dict[str, Any]) -> None:
        job = self.job
        name = model_name(job.base_model, job.suffix, job.id)
        # The deployment request is written with the success, so no adapter is ever forgotten.
        extra = ()
        if job.deploy:
            tenant = await self.store.job_tenant(job.id)
            extra = (deployment_request(job, tenant, name, result["bucket"], result["prefix"],
                                        kind="final", folder=job.id),)
        finish: dict[str, Any] = {}
        if (stop := result.get("early_stop")) is not None:
            # The progress ends where training did (21/21, not 21/56); the event says why.
            last = (await self.store.get_job(None, job.id)).progress
            finish = {"early_stopping": stop,
                      "progress": {"epoch": float(stop["stopped_after_epoch"]), "step": stop["step"],
                                   "total_steps": stop["step"], "loss": last.loss if last else None}}
            losses = ", ".join(f"{v:.4f}" for v in stop["valid_losses"])
            await self.store.add_event(
                job.id, "early_stopped",
                f"stopped early after epoch {stop['stopped_after_epoch']} of {stop['n_epochs']}: "
                f"{stop['reason']}; validation losses {losses}; the final adapter is epoch "
                f"{stop['chosen_epoch']}'s", data=stop, lease=self.lease)
        if job.estimate is not None:
            actual = time.time() - job.started_at if job.started_at else None
            finish["estimate"] = {**msgspec.to_builtins(job.estimate),
                                  "actual_seconds": round(actual, 1) if actual else None}
        try:
            await self.store.set_status(
                job.id, s.Status.succeeded,
                f"training finished; the adapter is at s3://{result['bucket']}/{result['prefix']}/",
                data={"fine_tuned_model": name, "train_loss": result.get("train_loss"),
                      "best_checkpoint": result.get("best_checkpoint"),
                      "trained_tokens": result.get("trained_tokens"),
                      "supervised_tokens": result.get("supervised_tokens")},
                lease=self.lease, fine_tuned_model=name, extra_rows=extra,
                trained_tokens=result.get("trained_tokens"),
                deployment={"status": "pending"} if job.deploy else None, **finish)
        except InvalidTransition:
            self.log.info("job changed before it could succeed")

    async def _calibrate(self, result: dict[str, Any], wall_seconds: float) -> None:
        """Add this job's throughput to the table duration estimates are made from."""
        tokens = result.get("trained_tokens")
        if not tokens or not result.get("train_seconds"):
            return
        # Training time at the steady rate; the rest of the attempt (imports, loading, the first
        # steps' compilation, saving) is startup, which estimates add as a median.
        steady = result.get("steady_tokens_per_second")
        train_seconds = tokens / steady if steady else result["train_seconds"]
        row = ThroughputRow(
            device=result["device_name"], shape=calibration_key(result["shape"], self.job.method.type),
            backend=result["backend"],
            available_bytes=result.get("available_bytes"), job_id=self.job.id,
            tokens=tokens, train_seconds=train_seconds,
            startup_seconds=max(0.0, wall_seconds - train_seconds))
        try:
            await Throughput(self.store.db).record(row)
        except Exception:  # noqa: BLE001 - a missed calibration must not touch the finished job
            self.log.warning("throughput not recorded", exc_info=True)

    async def _pause(self) -> None:
        point = await self.store.resume_point(self.job.id)
        where = f" at step {point['step']}" if point else ""
        try:
            await self.store.set_status(self.job.id, s.Status.paused,
                                        f"paused{where}; the GPU is free. Resume to continue from there",
                                        data={"resume_point": point}, lease=self.lease,
                                        pause_requested=False)
        except InvalidTransition:
            self.log.info("job changed before it could pause")

    async def _fail(self, code: str, message: str) -> None:
        error = {"code": code, "message": message}
        try:
            await self.store.set_status(self.job.id, s.Status.failed, message, level="error",
                                        data={"error": error}, lease=self.lease, error=error)
        except InvalidTransition:
            self.log.info("job changed before it could fail")
