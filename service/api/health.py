"""/healthz (process up, no auth), /readyz (database and object store reachable), /metrics."""

from __future__ import annotations

import anyio
from litestar import Controller, get
from litestar.datastructures import State
from litestar.response import Response

from service.api.openapi import AUTHED, errors
from service.errors import ServiceError


class NotReady(ServiceError):
    status_code = 503
    code = "not_ready"


class HealthController(Controller):
    tags = ["health"]

    @get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", responses=errors(503))
    async def readyz(self, state: State) -> dict[str, str]:
        try:
            with anyio.fail_after(5):
                await state.store.db.ping()
                await anyio.to_thread.run_sync(state.objects.ping, state.settings.artifact_bucket)
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            raise NotReady(f"a dependency is unreachable: {type(exc).__name__}") from None
        return {"status": "ready"}

    @get("/metrics", media_type="text/plain; version=0.0.4", responses=errors(*AUTHED))
    async def metrics(self, state: State, tenant: str) -> Response[bytes]:
        counts = await state.store.count_by_status()
        return Response(state.metrics.render(counts), media_type="text/plain; version=0.0.4")
