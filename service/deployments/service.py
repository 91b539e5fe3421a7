"""Deployments: which adapters the service wants vLLM to serve, by model name, and how that went.

The API requests and unloads; the serving replicas (serving/) load. Each replica reports its own
state of a deployment (loading, loaded, failed) into its own row of deployment_replicas, so
replicas never refuse each other; the deployment's status follows the best of them
(follow_replicas): loaded while any replica serves it. Every change of that status goes through
transition() and the table in states.py, and writes an event. For a job's final adapter the job's
own `deployment` field mirrors the row in the same transaction, written by the job store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.contracts import schema as s
from service.db.engine import Database, as_utc, unix
from service.db.tables import DeploymentReplicaRow, DeploymentRow, JobRow
from service.errors import InvalidRequest, InvalidTransition, NotFound
from service.jobs.states import check_deployment_transition
from service.jobs.store import event_row
from service.jobs.store_jobs import mirror_deployment

D = s.DeploymentStatus
ACTIVE = (D.pending.value, D.loading.value, D.loaded.value)


async def transition(ses: AsyncSession, row: DeploymentRow, to: s.DeploymentStatus, message: str,
                     *, error: str | None = None, data: dict[str, Any] | None = None) -> None:
    """Move `row` to `to` if the table allows it and nobody moved it first (the UPDATE is
    conditional on the status read, as for jobs: two serving replicas racing for pending ->
    loading get one winner); mirror it onto a final adapter's job; write the event.
    InvalidTransition otherwise, and nothing is written."""
    current = D(row.status)
    check_deployment_transition(current, to)
    result = await ses.execute(update(DeploymentRow)
                               .where(DeploymentRow.name == row.name, DeploymentRow.status == current.value)
                               .values(status=to.value, error=error)
                               .execution_options(synchronize_session=False))
    if result.rowcount != 1:
        raise InvalidTransition(f"deployment {row.name} changed while moving to {to.value}",
                                param="status")
    row.status, row.error = to.value, error
    if row.kind == "final":
        await mirror_deployment(ses, row.job_id, {"status": to.value, "loaded_at": unix(row.loaded_at),
                                                  "error": error})
    event = {"model": row.name, "status": to.value, **(data or {})}
    if error:
        event["error"] = error
    ses.add(event_row(row.job_id, "deployment", message, "error" if to is D.failed else "info", event))


def follow_replicas(states: list[str]) -> s.DeploymentStatus | None:
    """A deployment's status from its replicas' own: loaded while one serves it, else loading
    while one loads it, else failed once every replica that reported failed; None before any
    report."""
    for status in (D.loaded, D.loading):
        if status.value in states:
            return status
    return D.failed if states else None


def model_from_row(row: DeploymentRow) -> s.ModelInfo:
    return s.ModelInfo(id=row.name, kind="adapter", base_model=row.base_model, job_id=row.job_id,
                       status=row.status, error=row.error, loaded_at=unix(row.loaded_at),
                       served=row.status == "loaded")


def deployment_request(job: s.Job, tenant: str, name: str, bucket: str, prefix: str,
                       kind: str, folder: str) -> DeploymentRow:
    return DeploymentRow(name=name, tenant=tenant, job_id=job.id, base_model=job.base_model,
                         bucket=bucket, prefix=prefix, folder=folder, kind=kind, status="pending")


class Deployments:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def request(self, row: DeploymentRow) -> s.ModelInfo:
        """Ask for an adapter to be served; asking again for a failed or unloaded one retries."""
        async with self.db.write() as ses:
            found = await ses.get(DeploymentRow, row.name)
            said = f"deployment of {row.name} requested"
            if found is None:
                ses.add(row)
                found = row
                if row.kind == "final":
                    await mirror_deployment(ses, row.job_id, {"status": D.pending.value,
                                                              "loaded_at": None, "error": None})
                ses.add(event_row(row.job_id, "deployment", said,
                                  data={"model": row.name, "status": D.pending.value}))
            elif found.status not in ACTIVE:
                # Every replica tries afresh: what each did for the old request is void.
                await ses.execute(delete(DeploymentReplicaRow).where(DeploymentReplicaRow.name == row.name))
                await transition(ses, found, D.pending, said)
            return model_from_row(found)

    async def specs(self, *statuses: str, replica: str | None = None) -> list[s.DeploymentSpec]:
        """The deployments the serving sidecar acts on, with their job's finish time and, for a
        named replica, that replica's own state of each."""
        async with self.db.read() as ses:
            q = (select(DeploymentRow, JobRow.finished_at)
                 .join(JobRow, JobRow.id == DeploymentRow.job_id).order_by(DeploymentRow.created_at))
            if statuses:
                q = q.where(DeploymentRow.status.in_(statuses))
            found = (await ses.execute(q)).all()
            mine: dict[str, str] = {}
            if replica is not None:
                mine = dict((await ses.execute(
                    select(DeploymentReplicaRow.name, DeploymentReplicaRow.status)
                    .where(DeploymentReplicaRow.replica == replica))).tuples().all())
        return [s.DeploymentSpec(name=r.name, job_id=r.job_id, base_model=r.base_model, bucket=r.bucket,
                                 prefix=r.prefix, folder=r.folder, kind=r.kind, status=r.status,
                                 job_finished_at=as_utc(done).timestamp() if done else None,
                                 replica_status=mine.get(r.name))
                for r, done in found]

    async def rows(self, *statuses: str) -> list[DeploymentRow]:
        async with self.db.read() as ses:
            q = select(DeploymentRow)
            if statuses:
                q = q.where(DeploymentRow.status.in_(statuses))
            return list((await ses.scalars(q.order_by(DeploymentRow.created_at))).all())

    async def mark(self, name: str, status: str, *, replica: str, error: str | None = None,
                   loaded_at: datetime | None = None, load_seconds: float | None = None,
                   message: str | None = None) -> None:
        """What one serving replica reports about its own load. Its row is written, and the
        deployment moves if the best replica's state changed it. InvalidTransition (409), with
        nothing written, when the user unloaded it: the replica then unloads it. (A load that
        finishes after the user asked for the model again counts: the files are the same.)"""
        async with self.db.write() as ses:
            # Locked so that concurrent replicas' reports follow each other (Postgres; SQLite
            # writers take turns anyway).
            row = await ses.get(DeploymentRow, name, with_for_update=True)
            if row is None:
                return
            if D(row.status) is D.unloaded:  # the table refuses any report on it
                check_deployment_transition(D.unloaded, D(status))
            mine = await ses.get(DeploymentReplicaRow, (name, replica))
            if mine is None:
                ses.add(DeploymentReplicaRow(name=name, replica=replica, status=status, error=error))
            else:
                mine.status, mine.error = status, error
            await ses.flush()
            states = list((await ses.scalars(select(DeploymentReplicaRow.status)
                                             .where(DeploymentReplicaRow.name == name))).all())
            to = follow_replicas(states)
            if to is None or to.value == row.status:
                return
            if to is D.loaded:
                row.loaded_at, row.load_seconds = loaded_at, load_seconds
            data = {"seconds_from_success": load_seconds} if to is D.loaded and load_seconds is not None else {}
            said = message if to.value == status else None
            await transition(ses, row, to, said or f"{name} is {to.value}",
                             error=error if to is D.failed else None, data=data)

    async def loaded_on(self, name: str) -> set[str]:
        """The replicas whose vLLM serves `name` (by their own report). On the gateway's path."""
        found = await self.db.rows(
            "SELECT replica FROM deployment_replicas WHERE name = ? AND status = 'loaded'", name)
        return {r["replica"] for r in found}

    async def for_tenant(self, tenant: str) -> list[s.ModelInfo]:
        async with self.db.read() as ses:
            rows = (await ses.scalars(select(DeploymentRow).where(DeploymentRow.tenant == tenant)
                                      .order_by(DeploymentRow.created_at))).all()
        return [model_from_row(r) for r in rows]

    async def serves(self, tenant: str, name: str) -> bool:
        """Whether `name` is one of this tenant's adapters that is (or is being) served."""
        return await self.status_for(tenant, name) in ACTIVE

    async def status_for(self, tenant: str, name: str) -> str | None:
        """The status of this tenant's deployment `name`; None for a name that is not the tenant's
        (or nobody's). On the driver path: the gateway asks on every chat call."""
        found = await self.db.rows(
            "SELECT tenant, status FROM deployments WHERE name = ?", name)
        return found[0]["status"] if found and found[0]["tenant"] == tenant else None

    async def unload(self, tenant: str, name: str) -> s.ModelInfo:
        async with self.db.write() as ses:
            row = await ses.get(DeploymentRow, name)
            if row is None or row.tenant != tenant:
                raise NotFound(f"no deployed model {name!r}", param="name")
            if row.status != D.unloaded.value:
                row.loaded_at = None
                await ses.execute(delete(DeploymentReplicaRow).where(DeploymentReplicaRow.name == name))
                await transition(ses, row, D.unloaded, f"{name} unloaded on request")
            return model_from_row(row)

    async def deploy_checkpoint(self, tenant: str, job: s.Job, checkpoints: list[s.Checkpoint],
                                epoch: int) -> s.ModelInfo:
        """Serve a succeeded job's epoch checkpoint as `<fine_tuned_model>:ckpt-<epoch>`."""
        name = checkpoint_name(job, epoch)
        ckpt = next((c for c in checkpoints if c.epoch == epoch), None)
        if ckpt is None:
            raise NotFound(f"job {job.id} has no checkpoint for epoch {epoch}", param="epoch")
        bucket, _, prefix = ckpt.uri.removeprefix("s3://").partition("/")
        return await self.request(deployment_request(job, tenant, name, bucket, prefix.rstrip("/"),
                                                     kind="checkpoint", folder=f"{job.id}-ckpt-{epoch}"))

    async def finished_at(self, job_id: str) -> datetime | None:
        async with self.db.read() as ses:
            return await ses.scalar(select(JobRow.finished_at).where(JobRow.id == job_id))


def checkpoint_name(job: s.Job, epoch: int) -> str:
    if job.fine_tuned_model is None:
        raise InvalidRequest(f"job {job.id} has not succeeded; its checkpoints have no model name yet",
                             param="job_id", code="job_not_succeeded")
    return f"{job.fine_tuned_model}:ckpt-{epoch}"


def model_not_found(name: str) -> NotFound:
    # The same words for a model that does not exist and for another tenant's.
    return NotFound(f"The model {name!r} does not exist or you do not have access to it.",
                    param="model", code="model_not_found")
