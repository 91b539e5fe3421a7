"""Duration estimates before a job starts: its real tokens over the throughput that finished jobs
of the same model shape measured on a runner's device. Runners fill the throughput table when a
job succeeds in one uninterrupted attempt; the API reads it for dry runs and for every job when
its validation ends (README: Duration estimates)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from sqlalchemy import select

from service.contracts import schema as s
from service.db.engine import Database
from service.db.tables import ThroughputRow

# The newest finished jobs on one device that an estimate averages over.
CALIBRATION_JOBS = 5


def calibration_key(shape: str, method: str, device: str = "cuda", checkpointing: bool = True) -> str:
    """What a throughput row is kept under: a DPO step runs two sequences and a reference pass
    per example, so its tokens/s is not a supervised job's; a GPU job without gradient
    checkpointing ran ~1.4x a checkpointed one (bench/RESULTS.md). The CPU never checkpoints,
    so its rows keep the plain key."""
    key = shape if method == "supervised" else f"{shape}/{method}"
    return key if checkpointing or device == "cpu" else f"{key}/no-checkpointing"


def training_tokens(summary: s.DatasetSummary, n_epochs: int) -> int:
    """Real tokens (no padding) the optimizer will see: the training examples' tokens as
    trained, every epoch. The summary counts the whole training file; a split holds some out."""
    if summary.supervised_tokens is not None and summary.context_tokens is not None:
        per_epoch = summary.supervised_tokens + summary.context_tokens
    else:
        per_epoch = summary.tokens
    share = summary.n_train / summary.n_examples if summary.n_examples else 1.0
    return round(per_epoch * share * n_epochs)


def estimate_duration(shape: str, tokens: int, rows: list[ThroughputRow]) -> s.Estimate:
    """Startup (the median of the calibrating jobs') plus tokens at their pooled throughput."""
    if not rows:
        return s.Estimate(shape=shape, tokens=tokens,
                          message="no job of this model shape has finished on a runner yet; the "
                                  "first one to succeed calibrates the estimate")
    tokens_per_second = sum(r.tokens for r in rows) / sum(r.train_seconds for r in rows)
    startup = statistics.median(r.startup_seconds for r in rows)
    return s.Estimate(shape=shape, tokens=tokens, device=rows[0].device,
                      tokens_per_second=round(tokens_per_second, 1),
                      startup_seconds=round(startup, 1),
                      seconds=round(startup + tokens / tokens_per_second, 1),
                      calibration_jobs=len(rows))


@dataclass
class Throughput:
    """The calibration table: one row per finished job."""

    db: Database

    async def record(self, row: ThroughputRow) -> None:
        async with self.db.write() as ses:
            ses.add(row)

    async def latest(self, shape: str) -> list[ThroughputRow]:
        """The newest rows for `shape` on the device that most recently trained it: an estimate
        is for the device jobs of this shape run on now."""
        async with self.db.read() as ses:
            newest = await ses.scalar(select(ThroughputRow.device).where(ThroughputRow.shape == shape)
                                      .order_by(ThroughputRow.id.desc()).limit(1))
            if newest is None:
                return []
            found = await ses.scalars(
                select(ThroughputRow).where(ThroughputRow.shape == shape, ThroughputRow.device == newest)
                .order_by(ThroughputRow.id.desc()).limit(CALIBRATION_JOBS))
            return list(found)
