"""Webhook endpoint routes: OpenAI's `/v1/webhook_endpoints` (what the `openai` SDK's
`client.webhooks` calls) and the same on the native API at `/webhooks`, plus each endpoint's
delivery log. Handlers only call the service."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post
from litestar.datastructures import State
from litestar.params import Parameter

from service.db.pages import MAX_PAGE
from service.http_errors import AUTHED, errors
from service.webhooks import wire as w
from service.webhooks.service import WebhookService

Limit = Annotated[int, Parameter(ge=1, le=MAX_PAGE)]


def provide_webhooks(state: State) -> WebhookService:
    return state.webhooks


class _WebhookEndpoints(Controller):
    @post("/", status_code=200, responses=errors(*AUTHED, 422))
    async def create_endpoint(self, data: w.WebhookEndpointCreate, tenant: str,
                              webhooks: WebhookService) -> w.WebhookEndpointWithSecret:
        """Register an endpoint for some of the event types (fine_tuning.job.succeeded, .failed,
        .cancelled as OpenAI sends them; tunedock's .paused, .resumed, .checkpoint.created). The
        answer carries the signing secret, which is never shown again."""
        return await webhooks.create(tenant, data)

    @get("/", responses=errors(*AUTHED, 404))
    async def list_endpoints(self, tenant: str, webhooks: WebhookService, after: str | None = None,
                             limit: Limit = 20) -> w.WebhookEndpointList:
        """Newest first."""
        return await webhooks.list_endpoints(tenant, after, limit)

    @get("/{webhook_endpoint_id:str}", responses=errors(*AUTHED, 404))
    async def retrieve_endpoint(self, webhook_endpoint_id: str, tenant: str,
                                webhooks: WebhookService) -> w.WebhookEndpoint:
        return await webhooks.get(tenant, webhook_endpoint_id)

    @post("/{webhook_endpoint_id:str}", status_code=200, responses=errors(*AUTHED, 404, 422))
    async def update_endpoint(self, webhook_endpoint_id: str, data: w.WebhookEndpointUpdate,
                              tenant: str, webhooks: WebhookService) -> w.WebhookEndpoint:
        return await webhooks.update(tenant, webhook_endpoint_id, data)

    @delete("/{webhook_endpoint_id:str}", status_code=200, responses=errors(*AUTHED, 404))
    async def delete_endpoint(self, webhook_endpoint_id: str, tenant: str,
                              webhooks: WebhookService) -> w.DeletedWebhookEndpoint:
        """Deletes the endpoint and its deliveries: nothing more is sent to it."""
        return await webhooks.delete(tenant, webhook_endpoint_id)

    @post("/{webhook_endpoint_id:str}/rotate_secret", status_code=200, responses=errors(*AUTHED, 404))
    async def rotate_secret(self, webhook_endpoint_id: str, tenant: str, webhooks: WebhookService,
                            data: w.RotateSecret | None = None) -> w.WebhookEndpointWithSecret:
        """A new signing secret; with `keep_old_secret_active_for_24_hours`, deliveries carry a
        signature by the old one too for a day, so receivers can switch without missing one."""
        return await webhooks.rotate(tenant, webhook_endpoint_id, data or w.RotateSecret())

    @post("/{webhook_endpoint_id:str}/test", status_code=200, responses=errors(*AUTHED, 404, 422))
    async def test_endpoint(self, webhook_endpoint_id: str, tenant: str, webhooks: WebhookService,
                            data: w.WebhookTest | None = None) -> w.WebhookEndpointTestResult:
        """Send one signed event now (its data.id names no job) and answer the receiver's status."""
        return await webhooks.test(tenant, webhook_endpoint_id, data or w.WebhookTest())

    @get("/{webhook_endpoint_id:str}/deliveries", responses=errors(*AUTHED, 404))
    async def list_deliveries(self, webhook_endpoint_id: str, tenant: str, webhooks: WebhookService,
                              after: str | None = None, limit: Limit = 20) -> w.WebhookDeliveryList:
        """tunedock's own: every event sent (or being retried) to this endpoint, newest first,
        each with its attempts (time, HTTP status or why none came, duration)."""
        return await webhooks.deliveries(tenant, webhook_endpoint_id, after, limit)


class WebhooksController(_WebhookEndpoints):
    path = "/webhooks"
    tags = ["webhooks"]


class V1WebhooksController(_WebhookEndpoints):
    path = "/v1/webhook_endpoints"
    tags = ["openai: webhooks"]
