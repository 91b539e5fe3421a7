"""Exports: the only writer of export rows. Creation (one live export per job, format and
checkpoint), reads, and the runner's half: claim with a lease, heartbeat, stage, finish, fail,
release, and requeue of lapsed leases. Status changes go through transition() and the table in
states.py, and each writes an event on the job."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.contracts import schema as s
from service.db.engine import Database, unix
from service.db.tables import utcnow
from service.errors import InvalidTransition, LeaseLost, NotFound
from service.exports.rows import ExportRow
from service.ids import new_id
from service.jobs.rows import event_row
from service.jobs.states import check_export_transition

E = s.ExportStatus


class ExportLease(msgspec.Struct, frozen=True):
    """Who may write a running export: the runner slot that claimed it, for that attempt."""

    owner: str
    attempt: int

    def conditions(self) -> tuple[Any, ...]:
        return (ExportRow.status == E.running.value, ExportRow.lease_owner == self.owner,
                ExportRow.attempt == self.attempt)


def export_from_row(r: ExportRow) -> s.Export:
    done = r.status == E.succeeded.value
    return s.Export(
        id=r.id, job_id=r.job_id, model=r.model, format=s.ExportFormat(r.format),
        checkpoint=r.checkpoint, status=E(r.status), attempt=r.attempt,
        created_at=unix(r.created_at), started_at=unix(r.started_at),
        finished_at=unix(r.finished_at), stage=r.stage if r.status == E.running.value else None,
        filename=r.filename, bytes=r.bytes, sha256=r.sha256, seconds=r.seconds,
        checks=msgspec.convert(r.checks, s.ExportChecks) if r.checks else None,
        error=msgspec.convert(r.error, s.ErrorInfo) if r.error else None,
        download_url=f"/exports/{r.id}/content" if done else None)


async def transition(ses: AsyncSession, row: ExportRow, to: s.ExportStatus, message: str, *,
                     lease: ExportLease | None = None, level: str = "info", **fields: Any) -> None:
    """Move `row` to `to` if the table allows it and nobody moved it first (the UPDATE is
    conditional on the status read, and on the lease when given); write the job's event."""
    current = E(row.status)
    check_export_transition(current, to)
    now = utcnow()
    values: dict[str, Any] = {"status": to.value, **fields}
    if to is E.running and row.started_at is None:
        values["started_at"] = now
    if to in (E.succeeded, E.failed):
        values["finished_at"] = now
    if to is not E.running:
        values.update(lease_owner=None, lease_expires_at=None)
    cond = [ExportRow.id == row.id, ExportRow.status == current.value,
            *(lease.conditions() if lease else ())]
    result = await ses.execute(update(ExportRow).where(*cond).values(**values))
    if result.rowcount != 1:
        if lease is not None:
            raise LeaseLost(f"export {row.id} is no longer leased to {lease.owner}")
        raise InvalidTransition(f"export {row.id} changed while moving to {to.value}", param="status")
    for key, value in values.items():
        setattr(row, key, value)
    ses.add(event_row(row.job_id, "export", message, level,
                      {"export_id": row.id, "format": row.format, "status": to.value}))


class ExportStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_export(self, tenant: str, job_id: str, model: str, fmt: s.ExportFormat,
                            checkpoint: int | None) -> tuple[s.Export, bool]:
        """A queued export, or the one already queued, running or succeeded for the same job,
        format and checkpoint (an export is deterministic: asking twice makes one)."""
        async with self.db.write() as ses:
            q = (select(ExportRow).where(
                ExportRow.tenant == tenant, ExportRow.job_id == job_id,
                ExportRow.format == fmt.value, ExportRow.status != E.failed.value,
                ExportRow.checkpoint.is_(None) if checkpoint is None
                else ExportRow.checkpoint == checkpoint).order_by(ExportRow.created_at.desc()).limit(1))
            found = await ses.scalar(q)
            if found is not None:
                return export_from_row(found), False
            row = ExportRow(id=new_id("ftexport"), tenant=tenant, job_id=job_id, model=model,
                            format=fmt.value, checkpoint=checkpoint, status=E.queued.value,
                            attempt=0, created_at=utcnow())
            ses.add(row)
            what = f"epoch {checkpoint}'s checkpoint" if checkpoint else "the final adapter"
            ses.add(event_row(job_id, "export", f"export {row.id} of {what} as {fmt.value} queued",
                              data={"export_id": row.id, "format": fmt.value, "status": "queued"}))
            return export_from_row(row), True

    async def _export_row(self, ses: AsyncSession, tenant: str | None, export_id: str) -> ExportRow:
        row = await ses.get(ExportRow, export_id)
        if row is None or (tenant is not None and row.tenant != tenant):
            raise NotFound(f"no export {export_id!r}", param="export_id")
        return row

    async def get_export(self, tenant: str | None, export_id: str) -> s.Export:
        async with self.db.read() as ses:
            return export_from_row(await self._export_row(ses, tenant, export_id))

    async def export_object(self, tenant: str, export_id: str) -> tuple[s.Export, str, str, str | None]:
        """A succeeded export with where its file is: (export, bucket, key, modelfile)."""
        async with self.db.read() as ses:
            row = await self._export_row(ses, tenant, export_id)
            export = export_from_row(row)
            if row.status != E.succeeded.value or row.bucket is None or row.key is None:
                raise InvalidTransition(
                    f"export {export_id} is {row.status}; its file can be downloaded once it has "
                    "succeeded", param="export_id", code="export_not_ready")
            return export, row.bucket, row.key, row.modelfile

    async def list_exports(self, tenant: str, job_id: str) -> list[s.Export]:
        async with self.db.read() as ses:
            rows = (await ses.scalars(select(ExportRow).where(
                ExportRow.tenant == tenant, ExportRow.job_id == job_id)
                .order_by(ExportRow.created_at, ExportRow.id))).all()
        return [export_from_row(r) for r in rows]

    # -- the runner's half ----------------------------------------------------------------
    async def claim_export(self, owner: str, lease_s: float) -> s.Export | None:
        """Take the oldest queued export with a lease. Runners ask on every
        idle poll, so a read on the driver path first: no write lock taken when none is queued."""
        if not await self.db.rows("SELECT id FROM exports WHERE status = ? LIMIT 1", E.queued.value):
            return None
        async with self.db.write() as ses:
            q = (select(ExportRow).where(ExportRow.status == E.queued.value)
                 .order_by(ExportRow.created_at, ExportRow.id).limit(1)
                 .with_for_update(skip_locked=True))
            row = await ses.scalar(q)
            if row is None:
                return None
            attempt = row.attempt + 1
            await transition(ses, row, E.running, f"runner {owner} started export {row.id} "
                             f"(attempt {attempt})", lease_owner=owner, attempt=attempt,
                             lease_expires_at=utcnow() + timedelta(seconds=lease_s),
                             stage="starting", error=None)
            return export_from_row(row)

    async def heartbeat_export(self, export_id: str, lease: ExportLease, lease_s: float) -> bool:
        now = utcnow()
        async with self.db.write() as ses:
            result = await ses.execute(
                update(ExportRow).where(ExportRow.id == export_id, *lease.conditions(),
                                        ExportRow.lease_expires_at >= now)
                .values(lease_expires_at=now + timedelta(seconds=lease_s)))
            return result.rowcount == 1

    async def export_stage(self, export_id: str, lease: ExportLease, stage: str) -> None:
        async with self.db.write() as ses:
            result = await ses.execute(update(ExportRow).where(
                ExportRow.id == export_id, *lease.conditions()).values(stage=stage))
            if result.rowcount != 1:
                raise LeaseLost(f"export {export_id} is no longer leased to {lease.owner}")

    async def finish_export(self, export_id: str, lease: ExportLease, *, bucket: str, key: str,
                            filename: str, size: int, sha256: str, seconds: float,
                            checks: s.ExportChecks, modelfile: str | None) -> None:
        async with self.db.write() as ses:
            row = await self._export_row(ses, None, export_id)
            await transition(ses, row, E.succeeded,
                             f"export {export_id} ({row.format}) succeeded: {filename}, "
                             f"{size / 1e6:.1f} MB in {seconds:.1f} s", lease=lease, stage=None,
                             bucket=bucket, key=key, filename=filename, bytes=size, sha256=sha256,
                             seconds=round(seconds, 2), checks=msgspec.to_builtins(checks),
                             modelfile=modelfile)

    async def fail_export(self, export_id: str, lease: ExportLease | None, code: str,
                          message: str) -> None:
        async with self.db.write() as ses:
            row = await self._export_row(ses, None, export_id)
            await transition(ses, row, E.failed, f"export {export_id} failed: {message}",
                             lease=lease, level="error", stage=None,
                             error={"code": code, "message": message})

    async def release_export(self, export_id: str, lease: ExportLease, message: str) -> None:
        """Hand a running export back to the queue (the runner is stopping)."""
        try:
            async with self.db.write() as ses:
                row = await self._export_row(ses, None, export_id)
                await transition(ses, row, E.queued, message, lease=lease, level="warning")
        except (LeaseLost, InvalidTransition, NotFound):
            pass

    async def requeue_expired_exports(self, max_attempts: int) -> list[str]:
        """Exports whose lease ran out go back to queued (they start again from the adapter),
        or fail once their attempts are used up."""
        moved: list[str] = []
        if not await self.db.rows("SELECT id FROM exports WHERE status = ? LIMIT 1", E.running.value):
            return moved  # (read first, as in claim_export)
        async with self.db.write() as ses:
            q = (select(ExportRow).where(ExportRow.status == E.running.value,
                                         ExportRow.lease_expires_at < utcnow())
                 .with_for_update(skip_locked=True))
            for row in (await ses.scalars(q)).all():
                if row.attempt >= max_attempts:
                    await transition(ses, row, E.failed, f"export {row.id}: attempt {row.attempt} "
                                     f"of {max_attempts} lost its runner; giving up", level="error",
                                     error={"code": "max_attempts_exceeded",
                                            "message": f"{row.attempt} attempts lost their runner"})
                else:
                    await transition(ses, row, E.queued, f"runner {row.lease_owner} lost its lease "
                                     f"on export {row.id}; it will start again", level="warning")
                moved.append(row.id)
        return moved
