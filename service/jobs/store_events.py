"""A job's events and its epoch checkpoints."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from service.contracts import schema as s
from service.db.pages import page
from service.db.tables import CheckpointRow, EventRow
from service.ids import new_id
from service.jobs.rows import Lease, checkpoint_from_row, event_from_row, event_row, event_seq
from service.jobs.store_jobs import JobsStore


class EventsStore(JobsStore):
    # -- events and checkpoints -----------------------------------------------------------
    async def add_event(self, job_id: str, type_: str, message: str, level: str = "info",
                        data: dict[str, Any] | None = None, *, lease: Lease | None = None) -> None:
        async with self.db.write() as ses:
            await self._hold(ses, job_id, lease)
            ses.add(event_row(job_id, type_, message, level, data))

    async def list_events(self, tenant: str | None, job_id: str, after: str | None, limit: int,
                          *, newest_first: bool = False) -> s.Page:
        """One page of a job's events after the event `after`: oldest first (the native API and
        followers), or newest first as OpenAI lists them (`after` then pages to older ones)."""
        after_seq = event_seq(after)
        async with self.db.read() as ses:
            await self.job_row(ses, tenant, job_id)
            q = select(EventRow).where(EventRow.job_id == job_id)
            if newest_first:
                q = q.where(EventRow.seq < after_seq) if after else q
                q = q.order_by(EventRow.seq.desc())
            else:
                q = q.where(EventRow.seq > after_seq).order_by(EventRow.seq)
            rows = (await ses.scalars(q.limit(limit + 1))).all()
        return page([event_from_row(r) for r in rows], limit)

    async def record_checkpoint(self, job_id: str, epoch: int, step: int, uri: str,
                                metrics: dict[str, float], *, lease: Lease | None = None,
                                samples: list[dict[str, str]] | None = None) -> s.Checkpoint | None:
        """Record a checkpoint whose files are already uploaded; None when that epoch exists."""
        row = CheckpointRow(id=new_id("ftckpt"), job_id=job_id, epoch=epoch, step=step, uri=uri,
                            metrics=metrics, samples=samples)
        try:
            async with self.db.write() as ses:
                await self._hold(ses, job_id, lease)
                ses.add(row)
                await ses.flush()
                said = f"checkpoint saved at epoch {epoch}"
                if "reward_accuracy" in metrics:  # DPO: what the epoch did to the preferences
                    said += (f"; rewards chosen {metrics.get('rewards_chosen', 0):.3f}, rejected "
                             f"{metrics.get('rewards_rejected', 0):.3f}, reward accuracy "
                             f"{metrics['reward_accuracy']:.0%}")
                if "reward_mean" in metrics:  # reinforcement: the epoch's rollouts, graded
                    said += f"; mean reward {metrics['reward_mean']:.3f}"
                if "eval_score" in metrics:  # graded evaluation: this epoch's mean score
                    said += f"; eval score {metrics['eval_score']:.3f}"
                ses.add(event_row(job_id, "checkpoint", said,
                               data={"checkpoint_id": row.id, "epoch": epoch, "step": step,
                                     "uri": uri, "metrics": metrics}))
        except IntegrityError:
            return None
        return checkpoint_from_row(row)

    async def record_base_score(self, job_id: str, score: float, samples: list[dict[str, Any]], *,
                                lease: Lease) -> None:
        """The eval's score of the model training starts from, with its answers, as an event."""
        await self.update_job(job_id, lease=lease, base_eval_score=score)
        await self.add_event(job_id, "base_eval", f"before training: eval score {score:.3f}",
                             data={"score": score, "samples": samples}, lease=lease)

    async def list_checkpoints(self, tenant: str | None, job_id: str) -> list[s.Checkpoint]:
        async with self.db.read() as ses:
            await self.job_row(ses, tenant, job_id)
            rows = (await ses.scalars(select(CheckpointRow).where(CheckpointRow.job_id == job_id)
                                      .order_by(CheckpointRow.epoch))).all()
        return [checkpoint_from_row(r) for r in rows]
