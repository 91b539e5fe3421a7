"""Database rows (SQLAlchemy 2). Never returned to clients: service/jobs/rows.py converts them to schema types."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class FileRow(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    filename: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(BigInteger)
    bucket: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index("ix_files_tenant_created", "tenant", "created_at"),)


class DeletedFileRow(Base):
    """What is left of a deleted file: where it stood in its tenant's list, so that a client
    paging with `after=<that id>` (the last id of the page it holds) goes on from there."""

    __tablename__ = "deleted_files"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    deleted_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(32))
    base_model: Mapped[str] = mapped_column(String(128))
    training_file: Mapped[str] = mapped_column(String(1024))
    validation_file: Mapped[str | None] = mapped_column(String(1024))
    suffix: Mapped[str | None] = mapped_column(String(40))
    hyperparameters: Mapped[dict[str, Any]]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")
    deploy: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    fine_tuned_model: Mapped[str | None] = mapped_column(String(256))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    estimated_finish: Mapped[datetime | None]
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    dataset: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    deployment: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The latest mid-epoch resume point ({uri, step, epoch}): for resuming only, never served.
    resume_point: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Set when early stopping ended the job before its last epoch (schema.EarlyStopping).
    early_stopping: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Continued training: the parent model, its adapter and the lineage (schema.ContinuedFrom).
    continued_from: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The duration estimated when validation ended, and the actual one at success (schema.Estimate).
    estimate: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # What the job trains (schema.Method); NULL on jobs from before DPO: supervised.
    method: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Set by POST …/pause on a running job; the runner checkpoints, stops the child, pauses it.
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Higher first among this tenant's queued jobs; tenants share the runners fairly whatever it is.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Devices asked for (schema.Gpus): a count, or "auto".
    gpus: Mapped[str] = mapped_column(String(8), default="1", server_default="1")
    # Devices the latest attempt took (its ranks) when it was claimed: a tenant's running jobs'
    # sum is what tenant_max_gpus caps.
    devices: Mapped[int | None] = mapped_column(Integer)
    # Graded evaluation (schema.JobEval), and the score of the model training started from.
    eval: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    base_eval_score: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_tenant_created", "tenant", "created_at"),
    )


class EventRow(Base):
    __tablename__ = "job_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(16))
    type: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(String(1024))
    metrics: Mapped[dict[str, Any]]
    # The epoch's greedy answers to the job's eval prompts: [{"prompt", "answer"}].
    samples: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("job_id", "epoch", name="uq_checkpoints_job_epoch"),)


class ThroughputRow(Base):
    """One finished job's measured speed: what duration estimates are calibrated from, per
    device and model shape. Runners add a row when a job succeeds in one uninterrupted attempt."""

    __tablename__ = "throughput"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(128))  # "cpu", or the GPU's name
    shape: Mapped[str] = mapped_column(String(128))  # service.shapes.Shape.label
    backend: Mapped[str] = mapped_column(String(32))  # unsloth | peft
    available_bytes: Mapped[int | None] = mapped_column(BigInteger)  # GPU memory free at its start
    job_id: Mapped[str] = mapped_column(String(40))
    tokens: Mapped[int] = mapped_column(BigInteger)  # real tokens trained, every epoch
    train_seconds: Mapped[float] = mapped_column(Float)  # tokens at the steady rate (evals included)
    startup_seconds: Mapped[float] = mapped_column(Float)  # the rest: imports, load, compile, save
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index("ix_throughput_shape_device", "shape", "device", "created_at"),)


class IdempotencyRow(Base):
    __tablename__ = "idempotency_keys"
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeploymentRow(Base):
    """An adapter the service wants served (status loaded) or not (unloaded), by its model name."""

    __tablename__ = "deployments"
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    base_model: Mapped[str] = mapped_column(String(128))
    bucket: Mapped[str] = mapped_column(String(255))
    prefix: Mapped[str] = mapped_column(String(1024))
    folder: Mapped[str] = mapped_column(String(128))  # derived from the job id, never user text
    kind: Mapped[str] = mapped_column(String(16))  # final | checkpoint
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    loaded_at: Mapped[datetime | None]
    load_seconds: Mapped[float | None]


class DeploymentReplicaRow(Base):
    """One serving replica's own state of a deployment (loading, loaded or failed), under the
    replica's name (its URL as the gateway lists it). Each sidecar writes only its own rows, so
    replicas never contend; the deployment's status follows the best of them (deployments.py)."""

    __tablename__ = "deployment_replicas"
    name: Mapped[str] = mapped_column(ForeignKey("deployments.name", ondelete="CASCADE"), primary_key=True)
    replica: Mapped[str] = mapped_column(String(256), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
