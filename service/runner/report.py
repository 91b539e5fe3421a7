"""What the runner writes for one attempt of one job: each child message as job fields and
events (progress, ETA, plan, checkpoints, resume points), the retry events, and the final status
(succeeded with its deployment request, paused, released, failed) and the throughput row. Every
write carries the attempt's lease, so a fenced runner's writes are refused."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import msgspec

from service.contracts import messages as m
from service.contracts import schema as s
from service.db.tables import ThroughputRow
from service.deployments.service import deployment_request
from service.errors import InvalidTransition
from service.ids import model_name
from service.jobs.estimate import Throughput, calibration_key
from service.jobs.store import Lease, Store
from service.runner.policy import Attempt, Decision


@dataclass
class Reporter:
    store: Store
    job: s.Job
    lease: Lease
    log: Any

    # -- while the child runs -------------------------------------------------------------
    async def handle(self, msg: m.ChildMessage, attempt: Attempt, started: float) -> None:
        """Record one message; `started` is when the child started (monotonic), for the ETA."""
        store, job_id, lease = self.store, self.job.id, self.lease
        match msg:
            case m.Started():
                await store.add_event(job_id, "backend",
                                      f"training on {msg.device} with the {msg.backend} backend",
                                      data={"backend": msg.backend, "device": msg.device,
                                            "versions": msg.versions, "cpu_threads": msg.cpu_threads},
                                      lease=lease)
            case m.Planned(plan=plan):
                attempt.plan = plan
                await store.update_job(job_id, plan=msgspec.to_builtins(plan), lease=lease)
                await store.add_event(
                    job_id, "plan", f"memory plan: micro-batch {plan.micro_batch_size} x "
                    f"{plan.gradient_accumulation_steps} accumulation"
                    + (f" on each of {plan.ranks} ranks ({plan.strategy})" if plan.ranks > 1 else "")
                    + f", about {plan.estimated_peak_bytes / 2**30:.2f} GiB peak"
                    + (" per rank" if plan.ranks > 1 else ""),
                    data=msgspec.to_builtins(plan), lease=lease)
            case m.Loaded():
                await store.add_event(job_id, "loaded", f"model loaded in {msg.seconds} s",
                                      data={"seconds": msg.seconds}, lease=lease)
            case m.TrainBegin():
                await store.add_event(job_id, "train_begin", f"training loop started at step {msg.step}",
                                      data={"step": msg.step}, lease=lease)
            case m.Progress():
                await self._progress(msg, started)
            case m.CheckpointSaved():
                await store.record_checkpoint(
                    job_id, msg.epoch, msg.step, f"s3://{msg.bucket}/{msg.prefix}/", msg.metrics,
                    lease=lease, samples=msgspec.to_builtins(msg.samples) if msg.samples else None)
            case m.BaseScored():
                await store.record_base_score(job_id, msg.score, msgspec.to_builtins(msg.samples), lease=lease)
            case m.Evaluated():
                await store.add_event(job_id, "eval", f"step {msg.step}: eval score {msg.score:.3f}",
                                      data={"step": msg.step, "epoch": msg.epoch, "score": msg.score,
                                            "samples": msgspec.to_builtins(msg.samples)}, lease=lease)
            case m.Selected():
                await store.add_event(
                    job_id, "checkpoint_selected",
                    f"the final adapter is epoch {msg.epoch}'s, the best eval score ({msg.score:.4g}); "
                    f"by epoch: " + ", ".join(f"{e}: {v:.4g}" for e, v in sorted(msg.scores.items())),
                    data={"epoch": msg.epoch, "score": msg.score,
                          "scores": {str(e): v for e, v in msg.scores.items()}}, lease=lease)
            case m.ResumePointSaved():
                await store.set_resume_point(job_id, lease, f"s3://{msg.bucket}/{msg.prefix}/",
                                             msg.step, msg.epoch)
            case m.Warned():
                await store.add_event(job_id, "warning", msg.message, "warning",
                                      data={"message": msg.message}, lease=lease)
            case m.Resumed():
                await store.add_event(job_id, "resumed", f"resumed from {msg.checkpoint}",
                                      data={"prefix": msg.prefix, "checkpoint": msg.checkpoint},
                                      lease=lease)
            case m.Stopped():
                attempt.untrained = not msg.trained
                await store.add_event(job_id, "stopped", msg.message, data=_fields(msg), lease=lease)
            case m.Continued() | m.Rollouts():
                await store.add_event(job_id, msg.__struct_config__.tag, msg.message,
                                      data=_fields(msg), lease=lease)
            case m.Result():
                attempt.result = msg
            case m.Failed():
                attempt.error = msg
            case m.Ready():
                pass

    async def placed(self, names: list[str], labels: list[str], neighbours: list[str],
                     budget: int | None, reason: str | None = None) -> None:
        """Where the attempt trains (its devices: one rank each), beside which jobs, the memory
        its plan may take there (per device), and why that many devices."""
        beside = (f"beside {len(neighbours)} other job{'s' if len(neighbours) > 1 else ''} "
                  f"({', '.join(neighbours)})") if neighbours else "alone"
        share = f"; its plan may take {budget / 2**30:.2f} GiB" if budget is not None else ""
        where = names[0] if len(names) == 1 else f"{len(names)} devices ({', '.join(names)}), one rank each,"
        if len(names) > 1:
            share += " per device"
        why = f" ({reason})" if reason else ""
        await self.store.add_event(self.job.id, "placement", f"training on {where} {beside}{share}{why}",
                                   data={"device": labels[0], "devices": labels, "ranks": len(labels),
                                         "neighbours": neighbours, "budget_bytes": budget,
                                         "reason": reason}, lease=self.lease)

    async def _progress(self, msg: m.Progress, started: float) -> None:
        progress = {"epoch": msg.epoch or 0.0, "step": msg.step, "total_steps": msg.total_steps,
                    "loss": msg.loss}
        fields: dict[str, Any] = {"progress": progress}
        if msg.trained_tokens is not None:
            fields["trained_tokens"] = msg.trained_tokens
        if msg.step and msg.total_steps:
            # The ETA: this attempt's time per step so far, times the steps left.
            elapsed = time.monotonic() - started
            fields["estimated_finish"] = datetime.fromtimestamp(
                time.time() + elapsed / msg.step * max(0, msg.total_steps - msg.step), tz=timezone.utc)
        await self.store.update_job(self.job.id, lease=self.lease, **fields)
        if msg.loss is not None:
            said = f"step {msg.step}/{msg.total_steps}: loss {msg.loss:.4f}"
            if msg.rewards and "reward_mean" in msg.rewards:  # reinforcement: the step's rollouts
                said += f", mean reward {msg.rewards['reward_mean']:.3f}"
            await self.store.add_event(self.job.id, "metrics", said,
                                       data={**_fields(msg), "attempt": self.job.attempt},
                                       lease=self.lease)

    # -- between children -----------------------------------------------------------------
    async def smaller_micro_batch(self, decision: Decision, oom_retry: int) -> None:
        """LeaseLost when the job went elsewhere meanwhile (then there is no retry here)."""
        assert decision.error is not None
        await self.store.add_event(
            self.job.id, "oom_retry", level="warning",
            message=f"out of memory at micro-batch {decision.failed_micro_batch} "
                    f"({decision.error.message}); retrying at micro-batch {decision.micro_batch} "
                    f"or less{' with gradient checkpointing' if decision.checkpointing else ''} "
                    "from the latest checkpoint",
            data={"micro_batch_size": decision.micro_batch, "retry": oom_retry + 1,
                  "failed_micro_batch_size": decision.failed_micro_batch,
                  "gradient_checkpointing": decision.checkpointing,
                  "error": _error(decision.error)},
            lease=self.lease)

    # -- endings --------------------------------------------------------------------------
    async def release(self, message: str, *, refund: bool = False) -> None:
        await self.store.release(self.job.id, self.lease, message, refund=refund)

    async def retry_elsewhere(self, error: m.Failed) -> None:
        await self.store.add_event(self.job.id, "attempt_failed", error.message, "warning",
                                   data={"error": _error(error), "attempt": self.job.attempt})
        await self.release(f"attempt {self.job.attempt} failed; retrying from the latest checkpoint")

    async def succeed(self, result: m.Result) -> None:
        job = self.job
        name = model_name(job.base_model, job.suffix, job.id)
        # The deployment request is written with the success, so no adapter is ever forgotten.
        extra = ()
        if job.deploy:
            tenant = await self.store.job_tenant(job.id)
            extra = (deployment_request(job, tenant, name, result.bucket, result.prefix,
                                        kind="final", folder=job.id),)
        finish: dict[str, Any] = {}
        if (stop := result.early_stop) is not None:
            # The progress ends where training did (21/21, not 21/56); the event says why.
            last = (await self.store.get_job(None, job.id)).progress
            finish = {"early_stopping": msgspec.to_builtins(stop),
                      "progress": {"epoch": float(stop.stopped_after_epoch), "step": stop.step,
                                   "total_steps": stop.step, "loss": last.loss if last else None}}
            series = (f"validation losses {', '.join(f'{v:.4f}' for v in stop.valid_losses)}"
                      if stop.watched == "valid_loss" else
                      f"eval scores {', '.join(f'{v:.4g}' for v in stop.scores)}")
            await self.store.add_event(
                job.id, "early_stopped",
                f"stopped early after epoch {stop.stopped_after_epoch} of {stop.n_epochs}: "
                f"{stop.reason}; {series}; the final adapter is epoch "
                f"{stop.chosen_epoch}'s", data=msgspec.to_builtins(stop), lease=self.lease)
        if job.estimate is not None:
            actual = time.time() - job.started_at if job.started_at else None
            finish["estimate"] = {**msgspec.to_builtins(job.estimate),
                                  "actual_seconds": round(actual, 1) if actual else None}
        try:
            await self.store.set_status(
                job.id, s.Status.succeeded,
                f"training finished; the adapter is at s3://{result.bucket}/{result.prefix}/",
                data={"fine_tuned_model": name, "train_loss": result.train_loss,
                      "best_checkpoint": result.best_checkpoint,
                      "trained_tokens": result.trained_tokens,
                      "supervised_tokens": result.supervised_tokens},
                lease=self.lease, fine_tuned_model=name, extra_rows=extra,
                trained_tokens=result.trained_tokens,
                deployment={"status": "pending"} if job.deploy else None, **finish)
        except InvalidTransition:
            self.log.info("job changed before it could succeed")

    async def calibrate(self, result: m.Result, wall_seconds: float) -> None:
        """Add this job's throughput to the table duration estimates are made from."""
        if not result.trained_tokens or not result.train_seconds:
            return
        # Training time at the steady rate; the rest of the attempt (imports, loading, the first
        # steps' compilation, saving) is startup, which estimates add as a median.
        steady = result.steady_tokens_per_second
        train_seconds = result.trained_tokens / steady if steady else result.train_seconds
        row = ThroughputRow(
            device=result.device_name,
            shape=calibration_key(result.shape, self.job.method.type,
                                  "cpu" if result.device_name == "cpu" else "cuda",
                                  result.gradient_checkpointing),
            backend=result.backend, available_bytes=result.available_bytes, job_id=self.job.id,
            tokens=result.trained_tokens, train_seconds=train_seconds,
            startup_seconds=max(0.0, wall_seconds - train_seconds))
        try:
            await Throughput(self.store.db).record(row)
        except Exception:  # noqa: BLE001 - a missed calibration must not touch the finished job
            self.log.warning("throughput not recorded", exc_info=True)

    async def pause(self, *, refund: bool = False) -> None:
        point = await self.store.resume_point(self.job.id)
        where = f" at step {point['step']}" if point else ""
        # An attempt stopped before its first step trained nothing: it does not count.
        fields = {"attempt": self.job.attempt - 1} if refund else {}
        try:
            await self.store.set_status(self.job.id, s.Status.paused,
                                        f"paused{where}; the GPU is free. Resume to continue from there",
                                        data={"resume_point": point}, lease=self.lease, **fields)
        except InvalidTransition:
            self.log.info("job changed before it could pause")

    async def fail(self, code: str, message: str) -> None:
        error = {"code": code, "message": message}
        try:
            await self.store.set_status(self.job.id, s.Status.failed, message, level="error",
                                        data={"error": error}, lease=self.lease, error=error)
        except InvalidTransition:
            self.log.info("job changed before it could fail")


def _fields(msg: m.Message) -> dict[str, Any]:
    """The message's own fields, as event data."""
    data = msgspec.to_builtins(msg)
    data.pop("type", None)
    data.pop("time", None)
    return data


def _error(error: m.Failed) -> dict[str, str]:
    return {"code": error.code, "message": error.message}
