"""/healthz (the process is up), /readyz (this process can serve: it answers; dependency health
is reported beside it, never a reason to be taken out of service), /health/dependencies (the
database and the object store, for monitoring), and /metrics (Prometheus, with its own key)."""

from __future__ import annotations

import anyio
from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.response import Response

from service.api.deps import bearer_is
from service.errors import ServiceError, Unauthorized
from service.http_errors import errors
from service.settings import Settings


class DependencyDown(ServiceError):
    status_code = 503
    code = "dependency_unavailable"


async def _probe(check, *args: object) -> str:  # noqa: ANN001
    try:
        with anyio.fail_after(3):
            await check(*args)
    except Exception as exc:  # noqa: BLE001 - any failure is "unreachable", with its kind only
        return f"unreachable ({type(exc).__name__})"
    return "ok"


async def dependencies(state: State) -> dict[str, str]:
    found: dict[str, str] = {}

    async def probe(name: str, check, *args: object) -> None:  # noqa: ANN001
        found[name] = await _probe(check, *args)

    async with anyio.create_task_group() as tg:
        tg.start_soon(probe, "database", state.store.db.ping)
        tg.start_soon(probe, "object_store", anyio.to_thread.run_sync, state.objects.ping,
                      state.settings.artifact_bucket)
    return dict(sorted(found.items()))


class HealthController(Controller):
    tags = ["health"]

    @get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz")
    async def readyz(self) -> dict[str, str]:
        """Ready once the app has started (migrations done, stores open) and answers. A shared
        dependency's outage is not a readiness failure: it would take every replica out of
        service at once, chat and job status included, where each route answers a clear 503 by
        itself. See /health/dependencies for the database and the object store."""
        return {"status": "ready"}

    @get("/health/dependencies", responses=errors(503))
    async def health_dependencies(self, state: State) -> dict[str, str]:
        """`{database, object_store}`: "ok" or "unreachable (…)"; 503 when any is unreachable."""
        found = await dependencies(state)
        if any(v != "ok" for v in found.values()):
            down = ", ".join(f"{k} {v}" for k, v in found.items() if v != "ok")
            raise DependencyDown(f"a dependency is unreachable: {down}")
        return found

    @get("/metrics", media_type="text/plain; version=0.0.4", responses=errors(401))
    async def metrics(self, request: Request, state: State, settings: Settings) -> Response[bytes]:
        """Service-wide counts: scraped with TUNEDOCK_METRICS_API_KEY, never with a tenant's key
        (a tenant must not see other tenants' jobs, even counted)."""
        if not bearer_is(request, settings.metrics_api_key):
            raise Unauthorized("/metrics takes the metrics key (TUNEDOCK_METRICS_API_KEY), not a "
                               "tenant's key" + ("" if settings.metrics_api_key else "; none is configured"),
                               param="Authorization", code="invalid_metrics_key")
        counts = await state.store.count_by_status()
        return Response(state.metrics.render(counts), media_type="text/plain; version=0.0.4")
