"""Dependencies injected into handlers: the tenant behind the bearer key, and the services."""

from __future__ import annotations

import hmac
import time

from litestar import Request
from litestar.datastructures import State

from service.deployments.service import Deployments
from service.errors import Unauthorized
from service.files.service import FileService
from service.jobs.service import JobService
from service.jobs.store import Store


def bearer_is(request: Request, wanted: str | None) -> bool:
    """Whether the request carries `Authorization: Bearer <wanted>` (never, with none set): the
    check of the service's own keys (internal, metrics), which are settings, not tenant keys."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return bool(wanted) and scheme.lower() == "bearer" and hmac.compare_digest(key.strip(), wanted)


async def provide_tenant(request: Request, state: State, store: Store) -> str:
    # Taking `store` (the key lookup needs it) also orders the two dependencies: Litestar runs
    # independent async dependencies of one handler in a task group, which costs more than the
    # lookup itself on the hot GET paths.
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("missing Authorization: Bearer <key> header", param="Authorization",
                           code="missing_api_key")
    key = key.strip()
    # A small in-process cache keeps the key lookup off the hot path of every request.
    cache: dict[str, tuple[str, float]] = state.key_cache
    hit = cache.get(key)
    now = time.monotonic()
    if hit and hit[1] > now:
        tenant = hit[0]
    else:
        found = await store.tenant_for_key(key)
        if found is None:
            raise Unauthorized("the API key is not valid", param="Authorization")
        tenant = found
        if len(cache) > 10_000:
            cache.clear()
        cache[key] = (tenant, now + state.settings.key_cache_seconds)
    request.scope["state"]["tenant"] = tenant
    return tenant


def provide_store(state: State) -> Store:
    return state.store


def provide_jobs(state: State) -> JobService:
    return state.jobs


def provide_files(state: State) -> FileService:
    return state.files


def provide_deployments(state: State) -> Deployments:
    return state.deployments


