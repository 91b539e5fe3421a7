"""/models and OpenAI's /v1/models side by side: base models and deployed adapters (unload one with
DELETE); /serving: where to chat with them."""

from __future__ import annotations

from litestar import Controller, Request, delete, get, post

from service import openai_types as o
from service.contracts import schema as s
from service.deployments.service import Deployments, model_not_found
from service.http_errors import AUTHED, errors
from service.jobs.service import JobService
from service.settings import Settings


# Beside the job's other routes in the API (/jobs/{id}/…), here because deploying is this domain's.
@post("/jobs/{job_id:str}/checkpoints/{epoch:int}/deploy", tags=["jobs"], status_code=202,
      responses=errors(*AUTHED, 404))
async def deploy_checkpoint(job_id: str, epoch: int, tenant: str, jobs: JobService,
                            deployments: Deployments) -> s.ModelInfo:
    """Serve an epoch checkpoint as `<fine_tuned_model>:ckpt-<epoch>`."""
    job = await jobs.get_job(tenant, job_id)
    return await deployments.deploy_checkpoint(tenant, job, await jobs.list_checkpoints(tenant, job_id), epoch)


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


class V1ModelsController(Controller):
    path = "/v1/models"
    tags = ["openai: models"]

    @get("/", responses=errors(*AUTHED))
    async def list_models(self, tenant: str, settings: Settings, deployments: Deployments) -> o.ListPage:
        """Base models, then this tenant's fine-tuned models and served checkpoints."""
        return o.page(await _models(tenant, settings, deployments))

    @get("/{model:str}", responses=errors(*AUTHED, 404))
    async def retrieve_model(self, model: str, tenant: str, settings: Settings,
                             deployments: Deployments) -> o.Model:
        found = next((m for m in await _models(tenant, settings, deployments) if m.id == model), None)
        if found is None:
            raise model_not_found(model)
        return found

    @delete("/{model:str}", status_code=200, responses=errors(*AUTHED, 404))
    async def delete_model(self, model: str, tenant: str, deployments: Deployments) -> o.Deleted:
        """Stop serving a fine-tuned model; its files stay and it can be deployed again."""
        await deployments.unload(tenant, model)
        return o.Deleted(id=model, object="model")


async def _models(tenant: str, settings: Settings, deployments: Deployments) -> list[o.Model]:
    data = [o.Model(id=m.alias, created=0, owned_by="tunedock",
                    status="served" if m.alias in settings.served_models else "not served")
            for m in settings.base_models]
    data += [o.Model(id=m.id, created=m.loaded_at or 0, owned_by=tenant, parent=m.base_model,
                     status=m.status)
             for m in await deployments.for_tenant(tenant) if m.status != "unloaded"]
    return data
