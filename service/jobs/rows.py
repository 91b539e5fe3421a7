"""Job, event and checkpoint rows to wire types, and the lease a runner writes under. Pages are
service/db/pages.py; files' rows are service/files/store.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from sqlalchemy import inspect as sa_inspect

from service.contracts import schema as s
from service.db.engine import unix
from service.db.tables import CheckpointRow, EventRow, JobRow
from service.errors import InvalidRequest


class Lease(msgspec.Struct, frozen=True):
    """Who may write a running job: the runner slot that claimed it, for that attempt."""

    owner: str
    attempt: int

    def conditions(self) -> tuple[Any, ...]:
        return (JobRow.status == s.Status.running.value, JobRow.lease_owner == self.owner,
                JobRow.attempt == self.attempt)


def job_from_row(row: JobRow | Mapping[str, Any]) -> s.Job:
    """The one place a job row becomes the wire type: an ORM row, or the columns as the driver
    returns them from `Database.rows` (JSON as text, SQLite timestamps as text)."""
    r = _column_values(row) if isinstance(row, JobRow) else row
    return s.Job(
        id=r["id"],
        status=s.Status(r["status"]),
        base_model=r["base_model"],
        training_file=r["training_file"],
        validation_file=r["validation_file"],
        suffix=r["suffix"],
        hyperparameters=json_value(r["hyperparameters"], s.Hyperparameters),
        metadata=json_value(r["metadata"], dict[str, str]) or {},
        deploy=bool(r["deploy"]),
        created_at=unix(r["created_at"]),
        started_at=unix(r["started_at"]),
        finished_at=unix(r["finished_at"]),
        fine_tuned_model=r["fine_tuned_model"],
        error=json_value(r["error"], s.ErrorInfo),
        attempt=r["attempt"],
        trained_tokens=r["trained_tokens"],
        estimated_finish=unix(r["estimated_finish"]),
        progress=json_value(r["progress"], s.Progress),
        dataset=json_value(r["dataset"], s.DatasetSummary),
        plan=json_value(r["plan"], s.MemoryPlan),
        deployment=json_value(r["deployment"], s.Deployment),
        early_stopping=json_value(r["early_stopping"], s.EarlyStopping),
        continued_from=json_value(r["continued_from"], s.ContinuedFrom),
        estimate=json_value(r["estimate"], s.Estimate),
        method=json_value(r["method"], s.Method) or s.Method(),
        priority=r["priority"] or 0,
        gpus=gpus_value(r["gpus"]),
        eval=json_value(r["eval"], s.JobEval),
        base_eval_score=r["base_eval_score"],
    )


# (column name, ORM attribute) for every jobs column; "metadata" is `metadata_` on the class.
_JOB_COLUMNS = [(attr.columns[0].name, attr.key) for attr in sa_inspect(JobRow).column_attrs]
JOB_SELECT = "SELECT " + ", ".join(name for name, _ in _JOB_COLUMNS) + " FROM jobs"


def _column_values(row: JobRow) -> dict[str, Any]:
    return {name: getattr(row, key) for name, key in _JOB_COLUMNS}


def gpus_value(stored: str | None) -> int | str:
    """The jobs.gpus column ("auto", or a count as text) as the API says it."""
    return "auto" if stored == "auto" else int(stored or 1)


def json_value(value: Any, type_: Any) -> Any:
    """A JSON column's value (text from the driver, or already decoded by SQLAlchemy) as `type_`."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        return msgspec.json.decode(value, type=type_ | None)
    return msgspec.convert(value, type_)


def event_from_row(row: EventRow) -> s.Event:
    return s.Event(
        id=f"ftevent-{row.seq}",
        created_at=unix(row.created_at),
        level=row.level,
        type=row.type,
        message=row.message,
        data=row.data,
    )


def checkpoint_from_row(row: CheckpointRow) -> s.Checkpoint:
    return s.Checkpoint(
        id=row.id,
        job_id=row.job_id,
        epoch=row.epoch,
        step=row.step,
        uri=row.uri,
        metrics=dict(row.metrics),
        samples=[s.EvalSample(**x) for x in row.samples] if row.samples else None,
        created_at=unix(row.created_at),
    )


def event_row(job_id: str, type_: str, message: str, level: str = "info",
              data: Any = None) -> EventRow:
    return EventRow(job_id=job_id, type=type_, message=message, level=level, data=data)


def event_seq(after: str | None) -> int:
    if not after:
        return 0
    try:
        return int(after.removeprefix("ftevent-"))
    except ValueError:
        raise InvalidRequest(f"after={after!r} is not an event id", param="after") from None
