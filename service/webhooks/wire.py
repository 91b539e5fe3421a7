"""Webhook wire types: OpenAI's webhook endpoint objects (as its `openai` SDK has them) and the
event payloads, plus tunedock's own delivery log."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

# OpenAI's fine-tuning event types, and tunedock's own (OpenAI sends no such events).
OPENAI_EVENTS = ("fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled")
OWN_EVENTS = ("fine_tuning.job.paused", "fine_tuning.job.resumed", "fine_tuning.job.checkpoint.created")
EVENT_TYPES = OPENAI_EVENTS + OWN_EVENTS
EventType = Literal["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled",
                    "fine_tuning.job.paused", "fine_tuning.job.resumed",
                    "fine_tuning.job.checkpoint.created"]

Name = Annotated[str, Meta(min_length=1, max_length=128)]
Url = Annotated[str, Meta(min_length=1, max_length=2048, pattern=r"^https?://[^ /?#@]+([/?#][^ ]*)?$", description=(
    "where deliveries are POSTed: https (http too where TUNEDOCK_WEBHOOK_ALLOW_PRIVATE_URLS is set); "
    "a public address unless that setting allows others"))]
EventTypes = Annotated[list[EventType], Meta(min_length=1, max_length=len(EVENT_TYPES))]


class WebhookEndpointCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    url: Url
    event_types: EventTypes
    name: Name = "webhook"


class WebhookEndpointUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    url: Url | None = None
    event_types: EventTypes | None = None
    name: Name | None = None


class RotateSecret(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    # While on, deliveries carry a signature by the old secret too, for 24 hours.
    keep_old_secret_active_for_24_hours: bool = False


class WebhookTest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    event_type: EventType = "fine_tuning.job.succeeded"


class WebhookEndpoint(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    updated_at: int
    name: str
    url: str
    event_types: list[str]
    signing_secret_hint: str


class WebhookEndpointWithSecret(WebhookEndpoint, kw_only=True):
    """Only the create and rotate answers carry the secret: it is never shown again."""

    signing_secret: str


class DeletedWebhookEndpoint(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class WebhookEndpointTestResult(msgspec.Struct, kw_only=True):
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    webhook_endpoint_id: str
    event_type: str
    status_code: int
    success: Literal[True] = True


class DeliveryAttempt(msgspec.Struct, kw_only=True):
    at: int
    status_code: int | None  # None: no HTTP answer (refused, timed out, not a public address)
    error: str | None
    duration_ms: int


class WebhookDelivery(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["webhook.delivery"] = "webhook.delivery"
    webhook_endpoint_id: str
    event_id: str  # the webhook-id header: the same on every retry, so a receiver can dedupe
    event_type: str
    job_id: str
    status: Literal["pending", "delivered", "failed"]
    created_at: int
    delivered_at: int | None
    next_attempt_at: int | None
    attempts: list[DeliveryAttempt]


class WebhookEvent(msgspec.Struct, kw_only=True):
    """The body POSTed to an endpoint: OpenAI's webhook event (`data.id` is the job's id)."""

    id: str
    object: Literal["event"] = "event"
    type: str
    created_at: int
    data: dict[str, Any]


class WebhookEndpointList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[WebhookEndpoint]
    has_more: bool
    first_id: str | None
    last_id: str | None


class WebhookDeliveryList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[WebhookDelivery]
    has_more: bool
    first_id: str | None
    last_id: str | None


# Request bodies whose OpenAPI schema is msgspec's own (service/api/openapi.complete).
REQUEST_TYPES = (WebhookEndpointCreate, WebhookEndpointUpdate, RotateSecret, WebhookTest)
