"""/internal: what the serving sidecar and vLLM's resolver plugin need from the service, so a
vLLM pod needs only the API's URL, the internal key and read access to the artifact bucket
(never the database). Answers only the internal key (TUNEDOCK_INTERNAL_API_KEY); tenant keys
and requests without it get 401, and with no internal key configured every call does."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, get, post
from litestar.params import Parameter

from service.api.deps import bearer_is
from service.contracts import schema as s
from service.db.tables import utcnow
from service.deployments.service import Deployments
from service.errors import Unauthorized
from service.http_errors import errors
from service.settings import Settings

Status = Annotated[list[str] | None, Parameter(query="status")]
Replica = Annotated[str | None, Parameter(query="replica", max_length=256,
                                          description="a replica's name: each spec then carries its own state")]


def _check(request: Request, settings: Settings) -> None:
    if not bearer_is(request, settings.internal_api_key):
        raise Unauthorized("this endpoint takes the internal key (TUNEDOCK_INTERNAL_API_KEY)",
                           param="Authorization", code="invalid_internal_key")


class InternalController(Controller):
    path = "/internal"
    tags = ["internal: serving"]

    @get("/deployments", responses=errors(400, 401, 500))
    async def deployments(self, request: Request, settings: Settings, deployments: Deployments,
                          status: Status = None, replica: Replica = None) -> list[s.DeploymentSpec]:
        """The adapters the service wants served (filter with one or more `status`)."""
        _check(request, settings)
        return await deployments.specs(*(status or ()), replica=replica)

    @post("/deployments/{name:str}", status_code=204, responses=errors(400, 401, 409, 500))
    async def report(self, request: Request, name: str, data: s.DeploymentReport, settings: Settings,
                     deployments: Deployments) -> None:
        """A serving replica reports its own load: loading, loaded (with seconds since the job
        succeeded), or failed (with why). Replicas never refuse each other; 409 when the model is
        no longer wanted, e.g. a load that finished after the user unloaded it (it stays
        unloaded, and the replica unloads it)."""
        _check(request, settings)
        loaded_at = utcnow() if data.status == "loaded" else None  # on the API's clock
        await deployments.mark(name, data.status, replica=data.replica, error=data.error, loaded_at=loaded_at,
                               load_seconds=data.load_seconds, message=data.message)
