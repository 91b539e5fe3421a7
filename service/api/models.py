"""/models: the base models this service can fine-tune (and, with serving, deployed adapters)."""

from __future__ import annotations

from litestar import Controller, get

from service.jobs import schema as s
from service.settings import Settings


class ModelsController(Controller):
    path = "/models"
    tags = ["models"]

    @get("/")
    async def list_models(self, tenant: str, settings: Settings) -> s.Page:
        data = [
            {"id": m.alias, "object": "model", "kind": "base",
             "served": m.alias in settings.served_models}
            for m in settings.base_models
        ]
        return s.Page(data=data, has_more=False, last_id=data[-1]["id"] if data else None)


class ServingController(Controller):
    path = "/serving"
    tags = ["models"]

    @get("/")
    async def serving(self, tenant: str, settings: Settings) -> s.Serving:
        """Where to send OpenAI-style chat calls for fine-tuned models, and the key to use."""
        return s.Serving(base_url=settings.serving_url, api_key=settings.serving_api_key)
