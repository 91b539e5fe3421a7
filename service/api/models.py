"""/models: base models and deployed adapters; /serving: where to chat with them."""

from __future__ import annotations

from litestar import Controller, Request, delete, get

from service.contracts import schema as s
from service.http_errors import AUTHED, errors
from service.jobs.deployments import Deployments
from service.settings import Settings


class ModelsController(Controller):
    path = "/models"
    tags = ["models"]

    @get("/", responses=errors(*AUTHED))
    async def list_models(self, tenant: str, settings: Settings, deployments: Deployments) -> s.Page:
        data: list[s.ModelInfo] = [
            s.ModelInfo(id=m.alias, kind="base", served=m.alias in settings.served_models)
            for m in settings.base_models
        ]
        data += await deployments.for_tenant(tenant)
        return s.Page(data=data, has_more=False, last_id=data[-1].id if data else None)

    @delete("/{name:str}", status_code=200, responses=errors(*AUTHED, 404))
    async def unload(self, name: str, tenant: str, deployments: Deployments) -> s.ModelInfo:
        """Stop serving an adapter; its files stay in S3 and it can be deployed again."""
        return await deployments.unload(tenant, name)


class ServingController(Controller):
    path = "/serving"
    tags = ["models"]

    @get("/", responses=errors(*AUTHED))
    async def serving(self, request: Request, tenant: str, settings: Settings) -> s.Serving:
        """Where to send OpenAI-style calls: this API's own /v1 gateway, with your own key (the
        model server behind it is internal); and the largest LoRA rank it serves."""
        return s.Serving(base_url=str(request.base_url).rstrip("/") + "/v1", api_key=None,
                         max_lora_rank=settings.max_lora_rank)
