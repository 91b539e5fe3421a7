"""The Litestar app factory: controllers, dependencies, error mapping, request ids, lifespan."""

from __future__ import annotations

import gc
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import structlog
from botocore.exceptions import BotoCoreError, ClientError
from litestar import Litestar, MediaType, Request, Response
from litestar.datastructures import MutableScopeHeaders
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.api.deps import provide_deployments, provide_files, provide_jobs, provide_store, provide_tenant
from service.api.gateway import GatewayController, GatewayJudges, Upstreams
from service.api.health import HealthController
from service.api.internal import InternalController
from service.api.openapi import complete as complete_openapi
from service.api.v1_files import V1FilesController
from service.db.engine import Database, migrate
from service.deployments.routes import ModelsController, ServingController, V1ModelsController, deploy_checkpoint
from service.deployments.service import Deployments
from service.errors import ServiceError
from service.exports.routes import ExportsController, provide_exports
from service.exports.service import ExportService
from service.exports.store import ExportStore
from service.files.routes import FilesController
from service.files.service import FileService
from service.graders.routes import REQUEST_TYPES as GRADER_REQUESTS
from service.graders.routes import GradersController, V1GradersController, provide_graders
from service.graders.service import GraderService
from service.jobs.routes import JobsController, V1FineTuningController, hyperparameters
from service.jobs.service import JobService
from service.jobs.store import Store
from service.logs import configure_logging
from service.metrics import Metrics
from service.settings import Settings, load_settings
from service.storage import make_store, storage_error_kind
from service.ui import dashboard
from service.webhooks.routes import V1WebhooksController, WebhooksController, provide_webhooks
from service.webhooks.service import WebhookService
from service.webhooks.store import WebhookStore
from service.webhooks.wire import EVENT_TYPES
from service.webhooks.wire import REQUEST_TYPES as WEBHOOK_REQUESTS

log = structlog.get_logger()
_PARAM = re.compile(r"`\$\.([A-Za-z0-9_.\[\]]+)`")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


# OpenAI's error `type` for a status, which /v1 clients (the openai SDK among them) read.
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
                 429: "rate_limit_error"}


def openai_error_type(status: int) -> str:
    return _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def _error(request: Request, status: int, code: str, message: str, param: str | None = None,
           headers: dict[str, str] | None = None) -> Response:
    """The one error shape, `{error: {code, message, param}}`, plus OpenAI's `type` on /v1."""
    error: dict[str, str | None] = {"code": code, "message": message, "param": param}
    if request.url.path.startswith("/v1/"):
        error["type"] = openai_error_type(status)
    return Response({"error": error}, status_code=status, media_type=MediaType.JSON, headers=headers)


def _service_error(request: Request, exc: ServiceError) -> Response:
    return _error(request, exc.status_code, exc.code, exc.message, exc.param)


# Friendlier words for constraints whose raw message is a regular expression.
_PATTERN_HINTS = {
    "training_file": "training_file must be a file- id from POST /files or an s3://bucket/key URI",
    "validation_file": "validation_file must be a file- id from POST /files or an s3://bucket/key URI",
    "suffix": "suffix may hold only lowercase letters, digits and '-', at most 40 characters",
    "method.type": "method.type must be 'supervised' or 'dpo'",
    "purpose": "purpose must be 'fine-tune': tunedock stores training data only",
    "url": "url must be https://host[:port][/path] (a webhook receiver), without user:password@",
}


def _validation_error(request: Request, exc: ValidationException) -> Response:
    extra = exc.extra if isinstance(exc.extra, list) else []
    detail = extra[0] if extra and isinstance(extra[0], dict) else {}
    message = str(detail.get("message") or exc.detail)
    param = detail.get("key") or None
    if found := _PARAM.search(message):
        param = found.group(1)
    elif "unknown field" in message and (name := re.search(r"`([^`]+)`", message)):
        param = name.group(1)
    if param == "data":  # Litestar's name for the whole body
        param = None
        message = ("the request body is missing or is not JSON: send a JSON object"
                   if message.strip("'") == "data" else f"the request body is not valid: {message}")
    elif param in _PATTERN_HINTS and ("matching regex" in message or "equal to" in message):
        message = _PATTERN_HINTS[param]
    elif param and param.split("[")[0] == "event_types" and "enum value" in message:
        message = f"{message}; the event types sent are {', '.join(EVENT_TYPES)}"
    return _error(request, 400, "invalid_request", message, param)


def _http_error(request: Request, exc: HTTPException) -> Response:
    codes = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
             413: "request_too_large", 415: "unsupported_media_type"}
    code = codes.get(exc.status_code, "invalid_request" if exc.status_code < 500 else "server_error")
    return _error(request, exc.status_code, code, str(exc.detail), headers=exc.headers)


def _object_store_error(request: Request, exc: Exception) -> Response:
    """An S3 error, classed: missing (404) and refused (403) are permanent, and a retry would
    not help; anything else (botocore's retries spent on 5xx, throttling, no connection) is a
    dependency down, and the client may retry. botocore's own text never reaches the client."""
    request_id = request.scope.get("state", {}).get("request_id")
    kind = storage_error_kind(exc)
    log.warning("object store error", error=type(exc).__name__, kind=kind, path=request.url.path,
                detail=str(exc)[:500])
    if kind == "missing":
        return _error(request, 404, "object_not_found", "the object store has no such object or bucket "
                      f"(it may have been deleted); request id {request_id}")
    if kind == "denied":
        return _error(request, 403, "object_store_denied",
                      "the object store refused this service access to the object; an operator "
                      "must grant the service's credentials access to it (retrying will not help; "
                      f"request id {request_id})")
    return _error(request, 503, "object_store_unavailable",
                  f"the object store failed this request; retry in a few seconds (request id {request_id})")


def _unexpected(request: Request, exc: Exception) -> Response:
    request_id = request.scope.get("state", {}).get("request_id")
    log.error("unhandled error", exc_info=exc, path=request.url.path)
    return _error(request, 500, "server_error", f"internal error; quote request id {request_id}")


def request_context(app: ASGIApp) -> ASGIApp:
    """Give every request an id (or take the caller's), echo it, log it, time it."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableScopeHeaders.from_message(message)
                headers["X-Request-ID"] = request_id
                if scope["method"] == "OPTIONS" and "allow" in headers:
                    headers["Allow"] = _allow(scope["app"], scope.get("path_template"))
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            route = scope.get("path_template") or "unmatched"
            scope["app"].state.metrics.latency.labels(scope["method"], route, str(status)).observe(
                time.perf_counter() - started)
            structlog.contextvars.unbind_contextvars("request_id")

    return middleware


def _allow(app: Litestar, template: str | None) -> str:
    """The methods a path answers. Litestar 2's own OPTIONS handler lists only the methods of the
    first handler registered on a path (litestar-org/litestar#4169, fixed in v3)."""
    methods = {m for route in app.routes if route.path_format == template
               for m in getattr(route, "methods", ())}
    return ", ".join(sorted(methods | {"OPTIONS"}))


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings()
    configure_logging(settings.log_json, settings.log_level)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(migrate, settings.database_url)
        db = Database(settings.database_url)
        objects = make_store(settings)
        if not settings.uses_s3:
            objects.ensure_bucket(settings.artifact_bucket)
        store = Store(db)
        deployments, upstreams = Deployments(db), Upstreams(settings)
        graders = GraderService(settings, GatewayJudges(settings, deployments, upstreams))
        jobs = JobService(settings, store, objects, graders=graders)
        app.state.update(settings=settings, store=store, objects=objects, jobs=jobs,
                         files=FileService(settings, store, objects, jobs.checked), deployments=deployments,
                         exports=ExportService(settings, store, ExportStore(db), objects),
                         metrics=Metrics(), key_cache={}, upstreams=upstreams,
                         webhooks=WebhookService(settings, WebhookStore(db)), graders=graders)
        await jobs.resume_pending()
        jobs.sweep_leases_in_background(app.state.exports.exports.requeue_expired_exports)
        dispatch_db = Database(settings.database_url)
        app.state.webhooks.start(WebhookStore(dispatch_db))
        # Everything loaded so far lives as long as the process; keeping it out of the cyclic
        # garbage collector's scans cuts the pauses that show up as p99 latency under load.
        gc.freeze()
        log.info("api started", version=__version__, database=db.engine.url.get_backend_name(),
                 object_store=type(objects).__name__)
        try:
            yield
        finally:
            await jobs.drain()
            await app.state.webhooks.stop()
            await dispatch_db.close()
            await app.state.upstreams.close()
            await db.close()

    return Litestar(
        route_handlers=[JobsController, hyperparameters, deploy_checkpoint, ExportsController, FilesController, ModelsController, ServingController,
                        HealthController, V1FilesController, V1FineTuningController,
                        V1ModelsController, GatewayController, InternalController, WebhooksController,
                        V1WebhooksController, GradersController, V1GradersController, *dashboard()],
        dependencies={
            "tenant": Provide(provide_tenant),
            "store": Provide(provide_store, sync_to_thread=False),
            "jobs": Provide(provide_jobs, sync_to_thread=False),
            "files": Provide(provide_files, sync_to_thread=False),
            "deployments": Provide(provide_deployments, sync_to_thread=False),
            "exports": Provide(provide_exports, sync_to_thread=False),
            "webhooks": Provide(provide_webhooks, sync_to_thread=False),
            "graders": Provide(provide_graders, sync_to_thread=False),
            "settings": Provide(lambda: settings, sync_to_thread=False),
        },
        exception_handlers={
            ServiceError: _service_error,
            BotoCoreError: _object_store_error,
            ClientError: _object_store_error,
            ValidationException: _validation_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        middleware=[request_context],
        lifespan=[lifespan],
        on_startup=[lambda app: complete_openapi(app.openapi_schema, WEBHOOK_REQUESTS + GRADER_REQUESTS)],
        request_max_body_size=1 << 20,
        openapi_config=OpenAPIConfig(title="tunedock", version=__version__, path="/openapi"),
        debug=False,
    )
