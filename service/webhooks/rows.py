"""The webhook tables (migration 0009). Times are unix seconds (floats): they are compared with
the clock by the dispatcher and answered as integers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.db.tables import Base


class WebhookEndpointRow(Base):
    __tablename__ = "webhook_endpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(128))
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(80))
    # Kept after a rotation that asked for it: deliveries are signed by both until it expires.
    previous_secret: Mapped[str | None] = mapped_column(String(80), default=None)
    previous_secret_expires_at: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class WebhookDeliveryRow(Base):
    """One event for one endpoint: the outbox row the dispatcher sends until it is delivered or
    its attempts run out. Its id is made from the event and the endpoint, so two dispatchers that
    see the same event write it once."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[str] = mapped_column(String(96), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    tenant: Mapped[str] = mapped_column(String(128))
    event_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(40))
    payload: Mapped[str] = mapped_column(Text)  # fixed when written: every retry sends the same bytes
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    next_attempt_at: Mapped[float | None] = mapped_column(Float)
    lease_until: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float, default=None)
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)


class WebhookCursorRow(Base):
    """How far the dispatcher has read the job event log (job_events.seq)."""

    __tablename__ = "webhook_cursor"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
