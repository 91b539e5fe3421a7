"""Jobs: the only writer of job rows. Creation, reads (on the driver path), the user's pause,
resume and cancel, status transitions through the state table, and the runner's half: claim
with a lease, heartbeat, release, requeue of expired leases, and fenced writes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.contracts import schema as s
from service.db.pages import newest_first, page
from service.db.tables import FileRow, IdempotencyRow, JobRow, utcnow
from service.errors import InvalidTransition, LeaseLost, NotFound
from service.jobs.rows import JOB_SELECT, Lease, event_row, job_from_row, json_value
from service.jobs.states import check_transition
from service.keys.store import KeysStore


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
        # A pause request is for the run it was made in: it never outlives that run.
        values.update(lease_owner=None, lease_expires_at=None, pause_requested=False)
    cond = [JobRow.id == job.id, JobRow.status == current.value]
    if lease is not None:
        cond.extend(lease.conditions())
    result = await session.execute(update(JobRow).where(*cond).values(**values))
    if result.rowcount != 1:
        raise InvalidTransition(f"job {job.id} changed while moving to {to.value}", param="status")
    for key, value in values.items():
        setattr(job, key, value)
    # `previous` tells a resume (paused -> queued) from a requeue (webhooks: service/webhooks).
    session.add(event_row(job.id, "status", message, level,
                          {"status": to.value, "previous": current.value, **(data or {})}))


async def mirror_deployment(session: AsyncSession, job_id: str, deployment: dict[str, Any]) -> None:
    """The job's copy of its final adapter's deployment (service/deployments/service.py moves the
    deployment itself), written in the caller's transaction."""
    await session.execute(update(JobRow).where(JobRow.id == job_id).values(deployment=deployment))


# The advisory lock claims take turns on (Postgres): any constant no other lock of ours uses.
_CLAIM_LOCK = 0x7475_6E65  # "tune"
# A claimer passes over at most this many jobs it can never run (claim), then waits a poll.
_MAX_PASSED = 50


class JobsStore(KeysStore):
    # -- jobs -----------------------------------------------------------------------------
    async def create_job(
        self, row: JobRow, idempotency_key: str | None, req_hash: str
    ) -> tuple[s.Job, bool]:
        """Insert a validating_files job and its first event; idempotent like insert_file."""
        try:
            async with self.db.write() as ses:
                found = await self._idempotent(ses, row.tenant, "jobs", idempotency_key, req_hash)
                if found is None:
                    await self._hold_files(ses, row)
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

    @staticmethod
    async def _hold_files(ses: AsyncSession, job: JobRow) -> None:
        """Inside the job's insert: the uploads it names still exist, share-locked until the
        commit, so a delete of one (which locks it for update, then looks for jobs reading it)
        either finishes first, and the job is refused, or waits and sees the job."""
        for param, ref in (("training_file", job.training_file), ("validation_file", job.validation_file)):
            if ref and ref.startswith("file-"):
                q = select(FileRow.id).where(FileRow.id == ref, FileRow.tenant == job.tenant)
                if await ses.scalar(q.with_for_update(read=True)) is None:
                    raise NotFound(f"{param} {ref!r} does not exist (it was deleted)", param=param)

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
        anchor = await self._job_values(tenant, after) if after else None
        sql, params = newest_first(sql, params, anchor, limit)
        return page([job_from_row(r) for r in await self.db.rows(sql, *params)], limit)

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

    async def set_resume_point(self, job_id: str, lease: Lease, uri: str, step: int,
                               epoch: float) -> None:
        """Remember the latest mid-epoch resume point (its files are already uploaded)."""
        await self.update_job(job_id, lease=lease,
                              resume_point={"uri": uri, "step": step, "epoch": epoch})

    async def resume_point(self, job_id: str) -> dict[str, Any] | None:
        return json_value((await self._job_values(None, job_id))["resume_point"], dict[str, Any])

    # -- validation's owner -----------------------------------------------------------------
    async def hold_validation(self, job_id: str, owner: str, lease_s: float) -> bool:
        """Take (or renew) the lease on validating a job's files: one API process at a time
        validates a file; another takes over only once that lease has run out (its process
        died). False when someone else holds it or the job is no longer validating. The lease
        uses the job's lease columns, which transition() clears when the job leaves."""
        now = utcnow()
        async with self.db.write() as ses:
            result = await ses.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == s.Status.validating_files.value,
                       (JobRow.lease_owner.is_(None)) | (JobRow.lease_owner == owner)
                       | (JobRow.lease_expires_at < now))
                .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_s)))
            return result.rowcount == 1

    # -- the runner's half ----------------------------------------------------------------
    async def claim(self, runner_id: str, lease_s: float, tenant_limit: int | None = None,
                    fits: Callable[[s.Job], int | None] | None = None,
                    tenant_gpu_limit: int | None = None) -> s.Job | None:
        """Take the next queued job, shared fairly between tenants: among the tenants with a queued
        job and fewer than `tenant_limit` running, the one with the fewest running jobs goes first;
        ties go to the tenant served least recently (never before first), then to the job that
        waited longest. Within a tenant: the highest priority, then the oldest. So one tenant's
        burst of jobs waits behind each other tenant's next job instead of in front of it.

        Claims take turns (a transaction-scoped advisory lock on Postgres; SQLite's one writer):
        two claimers never both see a tenant under its limit and both start a job for it.

        `fits`: how many devices the claimer would give the job it would take
        (runner/placement.py; True counts one). When it has no room (0 or False), nothing is
        claimed: no later job overtakes the one whose turn it is. None: the claimer can never
        run it (it asks for more GPUs than the runner has): it is passed over, its tenant's next
        job takes its place in the turn, and it waits for a runner that can.

        `tenant_gpu_limit`: the most devices one tenant's running jobs hold together. A tenant
        whose next job would take it over waits, and the next tenant in turn goes."""
        async with self.db.write() as ses:
            if not self.db.is_sqlite:
                await ses.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CLAIM_LOCK})
            rows = (await ses.execute(
                select(JobRow.tenant, func.count(), func.sum(func.coalesce(JobRow.devices, 1)))
                .where(JobRow.status == s.Status.running.value).group_by(JobRow.tenant))).tuples().all()
            running = {tenant: n for tenant, n, _ in rows}
            held = {tenant: int(devices) for tenant, _, devices in rows}
            found = await self._next_in_turn(ses, running, tenant_limit, fits, held, tenant_gpu_limit)
            if found is None:
                return None
            row, devices = found
            attempt = row.attempt + 1
            await transition(
                ses, row, s.Status.running, message=f"runner {runner_id} started attempt {attempt}",
                data={"runner": runner_id, "attempt": attempt},
                lease_owner=runner_id, lease_expires_at=utcnow() + timedelta(seconds=lease_s),
                attempt=attempt, devices=devices,
            )
            return job_from_row(row)

    async def _next_in_turn(self, ses: AsyncSession, running: dict[str, int], tenant_limit: int | None,
                            fits: Callable[[s.Job], int | None] | None, held: dict[str, int],
                            gpu_limit: int | None) -> tuple[JobRow, int] | None:
        """The queued job whose turn it is (claim's order) that the claimer has room for, and the
        devices it would take."""
        passed: set[str] = set()  # jobs this claimer can never run
        waiting: set[str] = set()  # tenants whose next job would take them over their GPU limit
        while len(passed) + len(waiting) <= _MAX_PASSED:
            order = func.row_number().over(partition_by=JobRow.tenant,
                                           order_by=(JobRow.priority.desc(), JobRow.created_at, JobRow.id))
            ranked = (select(JobRow.id, JobRow.tenant, JobRow.created_at, order.label("place"))
                      .where(JobRow.status == s.Status.queued.value, JobRow.id.not_in(passed),
                             JobRow.tenant.not_in(waiting)).subquery())
            heads = (await ses.execute(select(ranked.c.id, ranked.c.tenant, ranked.c.created_at)
                                       .where(ranked.c.place == 1))).tuples().all()
            eligible = [h for h in heads if tenant_limit is None or running.get(h[1], 0) < tenant_limit]
            if not eligible:
                return None
            served = dict((await ses.execute(
                select(JobRow.tenant, func.max(JobRow.started_at))
                .where(JobRow.tenant.in_({h[1] for h in eligible})).group_by(JobRow.tenant))).tuples().all())

            def turn(head: tuple) -> tuple:
                job_id, tenant, created_at = head
                last = served.get(tenant)
                return running.get(tenant, 0), last is not None, last or 0, created_at, job_id

            job_id, tenant, _ = min(eligible, key=turn)
            row = await ses.get(JobRow, job_id)
            room = 1 if fits is None else fits(job_from_row(row))
            if room is None:
                passed.add(job_id)
                continue
            if not room:
                return None
            if gpu_limit is not None and held.get(tenant, 0) + int(room) > gpu_limit:
                waiting.add(tenant)
                continue
            return row, int(room)
        return None

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

    async def release(self, job_id: str, lease: Lease, message: str, *, refund: bool = False) -> None:
        """Hand a running job back (graceful runner stop): to the queue, where it resumes
        elsewhere, or to paused if the user asked for a pause meanwhile. `refund`: the attempt
        trained nothing (stopped before its first step), so it does not count toward max_attempts."""
        try:
            async with self.db.write() as ses:
                row = await self.job_row(ses, None, job_id)
                to = s.Status.paused if row.pause_requested else s.Status.queued
                if to is s.Status.paused:
                    message += "; paused, as the user asked"
                await transition(ses, row, to, message=message, lease=lease,
                                 **({"attempt": row.attempt - 1} if refund else {}))
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
                elif row.pause_requested:  # the user asked for a pause: it has one now
                    await transition(
                        ses, row, s.Status.paused, level="warning",
                        message=f"runner {owner} lost its lease; paused, as the user asked, at "
                                "the latest checkpoint", data={"attempt": row.attempt},
                    )
                else:
                    await transition(
                        ses, row, s.Status.queued, level="warning",
                        message=f"runner {owner} lost its lease; the job will resume from its "
                                "latest checkpoint", data={"attempt": row.attempt},
                    )
                moved.append(row.id)
        return moved
