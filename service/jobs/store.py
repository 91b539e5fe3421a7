"""The job store: jobs, events, checkpoints, files and idempotency keys, with the runner's half
(claim with a lease, heartbeat, release, requeue of expired leases). The only writer of job status."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import msgspec
from sqlalchemy import delete, func, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.errors import Conflict, InvalidRequest, InvalidTransition, LeaseLost, NotFound
from service.ids import hash_key, new_api_key, new_id
from service.jobs import schema as s
from service.jobs.database import Database, unix
from service.jobs.db import ApiKey, CheckpointRow, EventRow, FileRow, IdempotencyRow, JobRow, utcnow
from service.jobs.states import check_transition

MAX_PAGE = 100


class Lease(msgspec.Struct, frozen=True):
    """Who may write a running job: the runner slot that claimed it, for that attempt."""

    owner: str
    attempt: int

    def conditions(self) -> tuple[Any, ...]:
        return (JobRow.status == s.Status.running.value, JobRow.lease_owner == self.owner,
                JobRow.attempt == self.attempt)


def request_hash(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


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
        hyperparameters=_json(r["hyperparameters"], s.Hyperparameters),
        metadata=_json(r["metadata"], dict[str, str]) or {},
        deploy=bool(r["deploy"]),
        created_at=unix(r["created_at"]),
        started_at=unix(r["started_at"]),
        finished_at=unix(r["finished_at"]),
        fine_tuned_model=r["fine_tuned_model"],
        error=_json(r["error"], s.ErrorInfo),
        attempt=r["attempt"],
        trained_tokens=r["trained_tokens"],
        estimated_finish=unix(r["estimated_finish"]),
        progress=_json(r["progress"], s.Progress),
        dataset=_json(r["dataset"], s.DatasetSummary),
        plan=_json(r["plan"], s.MemoryPlan),
        deployment=_json(r["deployment"], s.Deployment),
        early_stopping=_json(r["early_stopping"], s.EarlyStopping),
        continued_from=_json(r["continued_from"], s.ContinuedFrom),
        estimate=_json(r["estimate"], s.Estimate),
        method=_json(r["method"], s.Method) or s.Method(),
    )


# (column name, ORM attribute) for every jobs column; "metadata" is `metadata_` on the class.
_JOB_COLUMNS = [(attr.columns[0].name, attr.key) for attr in sa_inspect(JobRow).column_attrs]
JOB_SELECT = "SELECT " + ", ".join(name for name, _ in _JOB_COLUMNS) + " FROM jobs"


def _column_values(row: JobRow) -> dict[str, Any]:
    return {name: getattr(row, key) for name, key in _JOB_COLUMNS}


def _json(value: Any, type_: Any) -> Any:
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


def file_from_row(row: FileRow) -> s.File:
    return s.File(
        id=row.id,
        bytes=row.bytes,
        filename=row.filename,
        uri=f"s3://{row.bucket}/{row.key}",
        created_at=unix(row.created_at),
    )


def event_row(job_id: str, type_: str, message: str, level: str = "info",
              data: Any = None) -> EventRow:
    return EventRow(job_id=job_id, type=type_, message=message, level=level, data=data)


async def transition(
    session: AsyncSession,
    job: JobRow,
    to: s.Status,
    *,
    message: str,
    data: dict[str, Any] | None = None,
    level: str = "info",
    lease: Lease | None = None,
    **fields: Any,
) -> None:
    """Move `job` to `to` if the state table allows it and nobody moved it first; write the event.

    The UPDATE is conditional on the status we read (and on the lease when given), so a racing
    cancel, claim or finish can never be overwritten; the loser gets InvalidTransition.
    """
    current, to = s.Status(job.status), s.Status(to)
    check_transition(current, to)
    now = utcnow()
    values: dict[str, Any] = {"status": to.value, **fields}
    if to is s.Status.running and job.started_at is None:
        values["started_at"] = now
    if to in s.TERMINAL:
        values["finished_at"] = now
    if to is not s.Status.running:
        values.update(lease_owner=None, lease_expires_at=None)
    cond = [JobRow.id == job.id, JobRow.status == current.value]
    if lease is not None:
        cond.extend(lease.conditions())
    result = await session.execute(update(JobRow).where(*cond).values(**values))
    if result.rowcount != 1:
        raise InvalidTransition(f"job {job.id} changed while moving to {to.value}", param="status")
    for key, value in values.items():
        setattr(job, key, value)
    session.add(event_row(job.id, "status", message, level, {"status": to.value, **(data or {})}))


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- API keys -------------------------------------------------------------------------
    async def create_api_key(self, tenant: str) -> str:
        key = new_api_key()
        async with self.db.write() as ses:
            ses.add(ApiKey(id=new_id("key"), tenant=tenant, key_hash=hash_key(key)))
        return key

    async def tenant_for_key(self, key: str) -> str | None:
        # On the driver path: when the API's key cache expires, every request in flight looks
        # its key up at once.
        found = await self.db.rows(
            "SELECT tenant FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", hash_key(key))
        return found[0]["tenant"] if found else None

    # -- idempotency ----------------------------------------------------------------------
    @staticmethod
    async def _idempotent(
        ses: AsyncSession, tenant: str, endpoint: str, key: str | None, req_hash: str
    ) -> str | None:
        """The id of the resource an earlier request with this key made, or None."""
        if key is None:
            return None
        row = await ses.get(IdempotencyRow, (tenant, endpoint, key))
        if row is None:
            return None
        if row.request_hash != req_hash:
            raise Conflict(
                "this Idempotency-Key was already used with a different request body",
                param="Idempotency-Key",
                code="idempotency_key_reused",
            )
        return row.resource_id

    # -- files ----------------------------------------------------------------------------
    async def find_idempotent_file(self, tenant: str, key: str | None, req_hash: str) -> s.File | None:
        async with self.db.read() as ses:
            found = await self._idempotent(ses, tenant, "files", key, req_hash)
        return await self.get_file(tenant, found) if found else None

    async def insert_file(
        self, row: FileRow, idempotency_key: str | None, req_hash: str
    ) -> tuple[s.File, bool]:
        """Insert the file row; (file, created). With a known key: the first file, created=False."""
        try:
            async with self.db.write() as ses:
                found = await self._idempotent(ses, row.tenant, "files", idempotency_key, req_hash)
                if found is None:
                    ses.add(row)
                    if idempotency_key:
                        ses.add(IdempotencyRow(tenant=row.tenant, endpoint="files", key=idempotency_key,
                                               request_hash=req_hash, resource_id=row.id))
        except IntegrityError:
            found = await self.find_idempotent_file(row.tenant, idempotency_key, req_hash)
            if found is None:
                raise
            return found, False
        if found is not None:
            return await self.get_file(row.tenant, found), False
        return file_from_row(row), True

    async def get_file(self, tenant: str, file_id: str) -> s.File:
        return file_from_row(await self.file_row(tenant, file_id))

    async def file_row(self, tenant: str, file_id: str) -> FileRow:
        """A detached row, read on the driver path (every POST /jobs naming a file reads it)."""
        found = await self.db.rows("SELECT * FROM files WHERE id = ?", file_id)
        if not found or found[0]["tenant"] != tenant:
            raise NotFound(f"no file {file_id!r}", param="file_id")
        return FileRow(**found[0])

    async def file_in_use(self, tenant: str, file_id: str) -> bool:
        """Whether a job that has not ended reads this file."""
        live = [st.value for st in s.Status if st not in s.TERMINAL]
        async with self.db.read() as ses:
            found = await ses.scalar(select(JobRow.id).where(
                JobRow.tenant == tenant, JobRow.status.in_(live),
                (JobRow.training_file == file_id) | (JobRow.validation_file == file_id)).limit(1))
        return found is not None

    async def delete_file(self, tenant: str, file_id: str) -> None:
        """Delete the row, and the Idempotency-Key records that would replay it."""
        async with self.db.write() as ses:
            row = await ses.get(FileRow, file_id)
            if row is None or row.tenant != tenant:
                raise NotFound(f"no file {file_id!r}", param="file_id")
            await ses.delete(row)
            await ses.execute(delete(IdempotencyRow).where(
                IdempotencyRow.tenant == tenant, IdempotencyRow.endpoint == "files",
                IdempotencyRow.resource_id == file_id))

    async def list_files(self, tenant: str, after: str | None, limit: int) -> s.Page:
        async with self.db.read() as ses:
            q = select(FileRow).where(FileRow.tenant == tenant)
            if after:
                anchor = await ses.get(FileRow, after)
                if anchor is None or anchor.tenant != tenant:
                    raise NotFound(f"no file {after!r}", param="after")
                q = q.where((FileRow.created_at, FileRow.id) < (anchor.created_at, anchor.id))
            rows = (await ses.scalars(q.order_by(FileRow.created_at.desc(), FileRow.id.desc())
                                      .limit(limit + 1))).all()
        return _page([file_from_row(r) for r in rows], limit)

    # -- jobs -----------------------------------------------------------------------------
    async def create_job(
        self, row: JobRow, idempotency_key: str | None, req_hash: str
    ) -> tuple[s.Job, bool]:
        """Insert a validating_files job and its first event; idempotent like insert_file."""
        try:
            async with self.db.write() as ses:
                found = await self._idempotent(ses, row.tenant, "jobs", idempotency_key, req_hash)
                if found is None:
                    ses.add(row)
                    await ses.flush()
                    ses.add(event_row(row.id, "status", "job created; validating files",
                                   data={"status": row.status}))
                    if idempotency_key:
                        ses.add(IdempotencyRow(tenant=row.tenant, endpoint="jobs", key=idempotency_key,
                                               request_hash=req_hash, resource_id=row.id))
        except IntegrityError:
            async with self.db.read() as ses:
                found = await self._idempotent(ses, row.tenant, "jobs", idempotency_key, req_hash)
            if found is None:
                raise
        if found is not None:
            return await self.get_job(row.tenant, found), False
        return job_from_row(row), True

    async def job_row(self, ses: AsyncSession, tenant: str | None, job_id: str) -> JobRow:
        row = await ses.get(JobRow, job_id)
        if row is None or (tenant is not None and row.tenant != tenant):
            raise NotFound(f"no job {job_id!r}", param="job_id")
        return row

    async def job_tenant(self, job_id: str) -> str:
        return (await self._job_values(None, job_id))["tenant"]

    async def get_job(self, tenant: str | None, job_id: str) -> s.Job:
        return job_from_row(await self._job_values(tenant, job_id))

    async def _job_values(self, tenant: str | None, job_id: str) -> Mapping[str, Any]:
        found = await self.db.rows(f"{JOB_SELECT} WHERE id = ?", job_id)
        if not found or (tenant is not None and found[0]["tenant"] != tenant):
            raise NotFound(f"no job {job_id!r}", param="job_id")
        return found[0]

    async def list_jobs(
        self, tenant: str, after: str | None, limit: int, status: s.Status | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> s.Page:
        """Newest first; `after` is the last id of the previous page (keyset pagination);
        `metadata` keeps jobs whose metadata has every one of those key/value pairs."""
        sql, params = f"{JOB_SELECT} WHERE tenant = ?", [tenant]
        if status is not None:
            sql, params = sql + " AND status = ?", [*params, status.value]
        for key, value in (metadata or {}).items():
            if self.db.is_sqlite:
                sql, params = sql + " AND json_extract(metadata, ?) = ?", [*params, f'$."{key}"', value]
            else:
                sql, params = sql + " AND (metadata::jsonb ->> ?) = ?", [*params, key, value]
        if after:
            anchor = await self._job_values(tenant, after)
            sql += " AND (created_at < ? OR (created_at = ? AND id < ?))"
            params += [anchor["created_at"], anchor["created_at"], anchor["id"]]
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        rows = await self.db.rows(sql, *params, limit + 1)
        return _page([job_from_row(r) for r in rows], limit)

    async def jobs_in_status(self, status: s.Status) -> list[str]:
        async with self.db.read() as ses:
            return list((await ses.scalars(select(JobRow.id).where(JobRow.status == status.value))).all())

    async def count_by_status(self) -> dict[str, int]:
        async with self.db.read() as ses:
            rows = await ses.execute(select(JobRow.status, func.count()).group_by(JobRow.status))
            return {st: n for st, n in rows.all()}

    async def pause_job(self, tenant: str, job_id: str) -> s.Job:
        """A queued job pauses at once; a running one is asked to (its runner saves a resume point
        at the next step boundary, frees the GPU and pauses it). Idempotent."""
        async with self.db.write() as ses:
            row = await self.job_row(ses, tenant, job_id)
            status = s.Status(row.status)
            if status is s.Status.queued:
                await transition(ses, row, s.Status.paused, message="job paused by the user")
            elif status is s.Status.running and not row.pause_requested:
                row.pause_requested = True
                ses.add(event_row(job_id, "pause_requested", "pause requested; the job will save a "
                                  "resume point at the next step boundary and free its GPU"))
            elif status not in (s.Status.running, s.Status.paused):
                raise InvalidTransition(f"a {status.value} job cannot be paused; only queued and "
                                        "running jobs can", param="status")
            return job_from_row(row)

    async def resume_job(self, tenant: str, job_id: str) -> s.Job:
        """A paused job goes back to the queue and continues from where it paused."""
        async with self.db.write() as ses:
            row = await self.job_row(ses, tenant, job_id)
            if s.Status(row.status) is not s.Status.paused:
                raise InvalidTransition(f"a {row.status} job cannot be resumed; only paused jobs can",
                                        param="status")
            await transition(ses, row, s.Status.queued, message="job resumed by the user; it continues "
                             "from its latest resume point", pause_requested=False)
            return job_from_row(row)

    async def pause_requested(self, job_id: str) -> bool:
        return bool((await self._job_values(None, job_id))["pause_requested"])

    async def cancel_job(self, tenant: str, job_id: str) -> s.Job:
        async with self.db.write() as ses:
            row = await self.job_row(ses, tenant, job_id)
            if row.status != s.Status.cancelled.value:
                await transition(ses, row, s.Status.cancelled, message="job cancelled by the user")
            return job_from_row(row)

    async def set_status(
        self, job_id: str, to: s.Status, message: str, *, level: str = "info",
        data: dict[str, Any] | None = None, lease: Lease | None = None,
        extra_rows: tuple[Any, ...] = (), **fields: Any,
    ) -> s.Job:
        """Transition one job by id in its own transaction (validation, runner); `extra_rows`
        (warning events, a deployment request) are written in the same transaction."""
        async with self.db.write() as ses:
            row = await self.job_row(ses, None, job_id)
            await transition(ses, row, to, message=message, level=level, data=data,
                             lease=lease, **fields)
            ses.add_all(extra_rows)
            return job_from_row(row)

    async def update_job(self, job_id: str, *, lease: Lease | None = None, **fields: Any) -> None:
        """Fields that are not the status (progress, plan, deployment); with `lease`, only while
        that lease holds (else LeaseLost)."""
        assert "status" not in fields, "status changes go through transition()"
        async with self.db.write() as ses:
            cond = [JobRow.id == job_id, *(lease.conditions() if lease else ())]
            result = await ses.execute(update(JobRow).where(*cond).values(**fields))
            if lease is not None and result.rowcount != 1:
                raise LeaseLost(f"job {job_id} is no longer leased to {lease.owner}")

    @staticmethod
    async def _hold(ses: AsyncSession, job_id: str, lease: Lease | None) -> None:
        """Inside a write: lock the job row and check the lease still holds (fencing)."""
        if lease is None:
            return
        q = select(JobRow.id).where(JobRow.id == job_id, *lease.conditions()).with_for_update()
        if await ses.scalar(q) is None:
            raise LeaseLost(f"job {job_id} is no longer leased to {lease.owner}")

    # -- events and checkpoints -----------------------------------------------------------
    async def add_event(self, job_id: str, type_: str, message: str, level: str = "info",
                        data: dict[str, Any] | None = None, *, lease: Lease | None = None) -> None:
        async with self.db.write() as ses:
            await self._hold(ses, job_id, lease)
            ses.add(event_row(job_id, type_, message, level, data))

    async def list_events(self, tenant: str | None, job_id: str, after: str | None, limit: int) -> s.Page:
        after_seq = _event_seq(after)
        async with self.db.read() as ses:
            await self.job_row(ses, tenant, job_id)
            q = select(EventRow).where(EventRow.job_id == job_id, EventRow.seq > after_seq)
            rows = (await ses.scalars(q.order_by(EventRow.seq).limit(limit + 1))).all()
        return _page([event_from_row(r) for r in rows], limit)

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
                ses.add(event_row(job_id, "checkpoint", said,
                               data={"checkpoint_id": row.id, "epoch": epoch, "step": step,
                                     "uri": uri, "metrics": metrics}))
        except IntegrityError:
            return None
        return checkpoint_from_row(row)

    async def set_resume_point(self, job_id: str, lease: Lease, uri: str, step: int,
                               epoch: float) -> None:
        """Remember the latest mid-epoch resume point (its files are already uploaded)."""
        await self.update_job(job_id, lease=lease,
                              resume_point={"uri": uri, "step": step, "epoch": epoch})

    async def resume_point(self, job_id: str) -> dict[str, Any] | None:
        return _json((await self._job_values(None, job_id))["resume_point"], dict[str, Any])

    async def list_checkpoints(self, tenant: str | None, job_id: str) -> list[s.Checkpoint]:
        async with self.db.read() as ses:
            await self.job_row(ses, tenant, job_id)
            rows = (await ses.scalars(select(CheckpointRow).where(CheckpointRow.job_id == job_id)
                                      .order_by(CheckpointRow.epoch))).all()
        return [checkpoint_from_row(r) for r in rows]

    # -- the runner's half ----------------------------------------------------------------
    async def claim(self, runner_id: str, lease_s: float) -> s.Job | None:
        """Take the oldest queued job with a lease. Postgres skips rows other claimers hold."""
        async with self.db.write() as ses:
            q = (select(JobRow).where(JobRow.status == s.Status.queued.value)
                 .order_by(JobRow.created_at, JobRow.id).limit(1)
                 .with_for_update(skip_locked=True))
            row = await ses.scalar(q)
            if row is None:
                return None
            attempt = row.attempt + 1
            await transition(
                ses, row, s.Status.running, message=f"runner {runner_id} started attempt {attempt}",
                data={"runner": runner_id, "attempt": attempt}, lease_owner=runner_id,
                lease_expires_at=utcnow() + timedelta(seconds=lease_s), attempt=attempt,
            )
            return job_from_row(row)

    async def heartbeat(self, job_id: str, lease: Lease, lease_s: float) -> bool:
        """Extend the lease; False when the job is no longer ours (cancelled, lease lost). A lease
        that has already expired is not extended, even if nobody has requeued the job yet: its
        holder may have been frozen past it, and the sweep may be about to hand the job on."""
        now = utcnow()
        async with self.db.write() as ses:
            result = await ses.execute(
                update(JobRow)
                .where(JobRow.id == job_id, *lease.conditions(), JobRow.lease_expires_at >= now)
                .values(lease_expires_at=now + timedelta(seconds=lease_s))
            )
            return result.rowcount == 1

    async def release(self, job_id: str, lease: Lease, message: str) -> None:
        """Hand a running job back to the queue (graceful runner stop); it resumes elsewhere."""
        try:
            await self.set_status(job_id, s.Status.queued, message, lease=lease)
        except (InvalidTransition, NotFound):
            pass

    async def requeue_expired(self, max_attempts: int) -> list[str]:
        """Jobs whose lease ran out go back to queued, or fail once their attempts are used up."""
        now = utcnow()
        moved = []
        async with self.db.write() as ses:
            q = (select(JobRow).where(JobRow.status == s.Status.running.value,
                                      JobRow.lease_expires_at < now)
                 .with_for_update(skip_locked=True))
            for row in (await ses.scalars(q)).all():
                owner = row.lease_owner
                if row.attempt >= max_attempts:
                    last = (row.error or {}).get("message", "the runner stopped heartbeating")
                    await transition(
                        ses, row, s.Status.failed, level="error",
                        message=f"attempt {row.attempt} of {max_attempts} lost its lease; giving up",
                        error={"code": "max_attempts_exceeded",
                               "message": f"{row.attempt} attempts failed; last: {last}"},
                    )
                else:
                    await transition(
                        ses, row, s.Status.queued, level="warning",
                        message=f"runner {owner} lost its lease; the job will resume from its "
                                "latest checkpoint", data={"attempt": row.attempt},
                    )
                moved.append(row.id)
        return moved



def _event_seq(after: str | None) -> int:
    if not after:
        return 0
    try:
        return int(after.removeprefix("ftevent-"))
    except ValueError:
        raise InvalidRequest(f"after={after!r} is not an event id", param="after") from None


def _page(items: list[Any], limit: int) -> s.Page:
    has_more = len(items) > limit
    items = items[:limit]
    last = getattr(items[-1], "id", None) if items else None
    return s.Page(data=items, has_more=has_more, last_id=last)

