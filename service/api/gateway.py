"""The chat gateway: /v1/chat/completions and /v1/completions, proxied to vLLM (streaming
included) after checking that the named model is a base model or one of this tenant's served
adapters. vLLM is internal: only this gateway talks to it, with the serving key.

Any model name a tenant may not use answers exactly like one that does not exist, so a name
tells nothing about other tenants. With several vLLM replicas (TUNEDOCK_SERVING_URL as a comma
list) an adapter goes to a replica that reports it loaded, and any model name to the same one
while the set holds (rendezvous hashing over those replicas, or over all of them when none has
reported: a replica's resolver plugin then loads it on the first request).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import structlog
from litestar import Controller, Request, post
from litestar.datastructures import State
from litestar.response import Response, Stream

from service.api.openapi import ChatBody
from service.deployments.service import ACTIVE, D, Deployments, model_not_found
from service.errors import InvalidRequest, ServiceError
from service.http_errors import AUTHED, errors
from service.settings import Settings

log = structlog.get_logger()
MAX_BODY = 4 << 20
LOAD_POLL_S = 0.2


class ModelServerUnavailable(ServiceError):
    """The model server did not answer; retry in a few seconds."""

    status_code = 503
    code = "model_server_unavailable"


class _ModelField(msgspec.Struct):
    model: str | None = None
    stream: bool = False


class ModelLoading(ServiceError):
    """The adapter is still being loaded and checked; retry in a few seconds."""

    status_code = 503
    code = "model_loading"


class ModelServerError(ServiceError):
    """The model server failed the request (its log says why)."""

    status_code = 502
    code = "model_server_error"


class _UpstreamError(msgspec.Struct):
    message: str | None = None
    param: str | None = None


class _UpstreamBody(msgspec.Struct):
    error: _UpstreamError | None = None  # OpenAI's shape, which newer vLLM answers
    message: str | None = None  # vLLM's older `{"object": "error", "message": …}`


def upstream_error(status: int, content: bytes) -> ServiceError:
    """vLLM's error answer in the one error shape: a 4xx keeps its status and vLLM's message
    (it is about the request: a context too long, a bad parameter); a 5xx becomes a 502 whose
    message says nothing of vLLM's internals, which go to the log."""
    try:
        body = msgspec.json.decode(content, type=_UpstreamBody)
        message = (body.error.message if body.error else None) or body.message
        param = body.error.param if body.error else None
    except (msgspec.DecodeError, msgspec.ValidationError):
        message = param = None
    if status >= 500 or status < 400 or status in (401, 403):
        # 401/403: vLLM refused *us* (TUNEDOCK_SERVING_API_KEY), not the tenant: an operator's fix.
        log.warning("model server error", status=status, body=content[:1000])
        return ModelServerError(f"the model server failed the request (HTTP {status}); retry, and if "
                                "it persists tell the operator")
    error = InvalidRequest(f"the model server refused the request: {message or f'HTTP {status}'}"[:2000],
                           param=param, code="model_not_found" if status == 404 else None)
    error.status_code = status  # 400, 404, 422 …: as the model server said
    return error


def pick_upstream(upstreams: tuple[str, ...], model: str, loaded: set[str] | frozenset[str] = frozenset()) -> str:
    """Rendezvous hashing over the replicas that have `model` loaded (all of them when none
    has): the same model goes to the same replica while that set holds."""
    candidates = [u for u in upstreams if u in loaded] or upstreams
    return max(candidates, key=lambda u: hashlib.sha256(f"{u}\n{model}".encode()).digest())


class Upstreams:
    """The vLLM servers behind the gateway, one pooled HTTP client for all of them.

    aiohttp rather than httpx: relaying 64 streams at GPU rates, httpx's pure-Python HTTP/1.1
    reader (h11 under anyio, a timeout scope per read) took ~43% of the API process's CPU
    (py-spy, bench/gateway.py); aiohttp's reader is C. A session belongs to one event loop, so
    there is one per loop that relays (one in production; the test client runs handlers in a loop
    of their own)."""

    def __init__(self, settings: Settings) -> None:
        self.urls = tuple(u.strip().rstrip("/") for u in (settings.serving_url or "").split(",") if u.strip())
        self.headers = {"Authorization": f"Bearer {settings.serving_api_key}"} if settings.serving_api_key else {}
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            # Connect fails fast (a dead vLLM is a 503 at once); generation may take its time.
            session = self._sessions[loop] = aiohttp.ClientSession(
                headers=self.headers, auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=600, sock_connect=3),
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=60))
        return session

    async def close(self) -> None:
        current = asyncio.get_running_loop()
        for loop, session in self._sessions.items():
            if loop is current:
                await session.close()
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(session.close(), loop)
        self._sessions.clear()


async def allowed(settings: Settings, deployments: Deployments, tenant: str, name: str) -> bool:
    if name in settings.served_models:
        return True
    return await deployments.serves(tenant, name)


class GatewayController(Controller):
    path = "/v1"
    tags = ["openai: chat"]

    @post("/chat/completions", responses=errors(*AUTHED, 404, 503), status_code=200,
          request_max_body_size=MAX_BODY,  # above the app's 1 MiB: long chats and prompts
          operation_class=ChatBody)
    async def chat(self, request: Request, tenant: str, settings: Settings, deployments: Deployments,
                   state: State) -> Response:
        """OpenAI's chat completions (streaming with `stream: true`), answered by vLLM."""
        return await _proxy(request, "chat/completions", tenant, settings, deployments, state.upstreams)

    @post("/completions", responses=errors(*AUTHED, 404, 503), status_code=200,
          request_max_body_size=MAX_BODY,
          operation_class=ChatBody)
    async def completions(self, request: Request, tenant: str, settings: Settings,
                          deployments: Deployments, state: State) -> Response:
        """OpenAI's (legacy) completions, answered by vLLM."""
        return await _proxy(request, "completions", tenant, settings, deployments, state.upstreams)


async def _until_loaded(settings: Settings, deployments: Deployments, tenant: str, model: str) -> None:
    """Return once `model` is a base model or this tenant's adapter in `loaded`; 404 for a model it
    may not use. A deployment still pending or loading has not passed the serving-contract check
    (serving/check.py), and vLLM may already hold it (the deployer loads it to check it), so the
    call waits for `loaded` rather than be answered by an adapter that may yet fail; after
    gateway_load_wait_seconds it is a 503 the client retries (the official SDKs do on their own)."""
    if model in settings.served_models:
        return
    deadline = time.monotonic() + settings.gateway_load_wait_seconds
    while (status := await deployments.status_for(tenant, model)) != D.loaded.value:
        if status not in ACTIVE:  # none, another tenant's, failed or unloaded
            raise model_not_found(model)
        if time.monotonic() >= deadline:
            raise ModelLoading(f"{model} is still being loaded and checked against its training run; "
                               "retry in a few seconds")
        await asyncio.sleep(LOAD_POLL_S)


async def _upstream_url(settings: Settings, deployments: Deployments, upstreams: Upstreams, tenant: str,
                        model: str, route: str) -> str:
    """The replica to send `model` to, once the tenant may use it and it is served (404 for a model
    it may not use)."""
    await _until_loaded(settings, deployments, tenant, model)
    if not upstreams.urls:
        raise ModelServerUnavailable("no model server is configured (TUNEDOCK_SERVING_URL)")
    loaded = (await deployments.loaded_on(model)
              if len(upstreams.urls) > 1 and model not in settings.served_models else frozenset())
    return f"{pick_upstream(upstreams.urls, model, loaded)}/{route}"


class GatewayJudges:
    """The judges a score_model grader asks (service/graders/service.py's Judges): the models this
    tenant may chat with, through the same check and replicas as /v1/chat/completions."""

    def __init__(self, settings: Settings, deployments: Deployments, upstreams: Upstreams) -> None:
        self.settings, self.deployments, self.upstreams = settings, deployments, upstreams

    async def allowed(self, tenant: str, model: str) -> bool:
        return await allowed(self.settings, self.deployments, tenant, model)

    async def chat(self, tenant: str, body: dict, timeout_s: float) -> dict:
        url = await _upstream_url(self.settings, self.deployments, self.upstreams, tenant, body["model"],
                                  "chat/completions")
        try:
            async with self.upstreams.session().post(
                    url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=3)) as answer:
                content = await answer.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise ModelServerUnavailable(f"the judge model did not answer ({type(exc).__name__})") from None
        if answer.status >= 400:
            raise upstream_error(answer.status, content)
        try:
            return msgspec.json.decode(content)
        except msgspec.DecodeError:
            raise ModelServerError("the model server's answer was not JSON") from None


async def _proxy(request: Request, route: str, tenant: str, settings: Settings,
                 deployments: Deployments, upstreams: Upstreams) -> Response:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise InvalidRequest(f"the request body is over {MAX_BODY} bytes", param=None)
    try:
        head = msgspec.json.decode(body, type=_ModelField)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidRequest(f"the request body must be a JSON object with a 'model': {exc}",
                             param="model") from None
    if not head.model:
        raise InvalidRequest("name the model to answer with: 'model'", param="model")
    url = await _upstream_url(settings, deployments, upstreams, tenant, head.model, route)
    try:
        answer = await upstreams.session().post(url, data=body, headers={"Content-Type": "application/json"})
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        log.warning("model server unreachable", url=url, error=type(exc).__name__)
        raise ModelServerUnavailable("the model server is not answering (it may be restarting); "
                                     "retry in a few seconds") from None
    media_type = answer.headers.get("content-type", "application/json")
    if not head.stream or answer.status != 200:
        try:
            content = await answer.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("model server broke off", url=url, error=type(exc).__name__)
            raise ModelServerError("the model server broke off its answer; retry, and if it persists "
                                   "tell the operator") from None
        finally:
            answer.release()
        if answer.status >= 400:
            raise upstream_error(answer.status, content)
        return Response(openai_shaped(content), status_code=answer.status, media_type=media_type)
    return Stream(_relay(answer), status_code=200, media_type=media_type,
                  headers={"Cache-Control": "no-cache"})


# Fields OpenAI's schemas have as optional but never null, which vLLM sends as null: a strict
# client (one generated from OpenAI's document) refuses a null there, so they are left out, as
# OpenAI leaves them out. Required fields that may be null (content, refusal, logprobs) stay.
_OPTIONAL_TOP = ("system_fingerprint", "service_tier", "usage", "metadata")
_OPTIONAL_MESSAGE = ("tool_calls", "annotations", "function_call", "audio")
_OPTIONAL_USAGE = ("completion_tokens_details", "prompt_tokens_details")


def _drop_nulls(obj: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in obj and obj[key] is None:
            del obj[key]


def openai_shaped(content: bytes) -> bytes:
    """A (non-streamed) completion as OpenAI's schema has it (tests/e2e/test_serving.py checks
    each answer against OpenAI's published schema); a body that is not a JSON object passes as is.
    Stream chunks need nothing of this: vLLM's conform as they are."""
    try:
        body = msgspec.json.decode(content)
    except msgspec.DecodeError:
        return content
    if not isinstance(body, dict):
        return content
    _drop_nulls(body, _OPTIONAL_TOP)
    if isinstance(body.get("usage"), dict):
        _drop_nulls(body["usage"], _OPTIONAL_USAGE)
    for choice in body.get("choices") or ():
        if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
            _drop_nulls(choice["message"], _OPTIONAL_MESSAGE)
    return msgspec.json.encode(body)


async def _relay(answer: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    # Bytes as they come, never re-encoded: SSE events pass through whole or split, which the
    # client's SSE reader joins. A client that goes away closes this generator, which releases
    # (closes) the upstream connection, so vLLM stops generating for it.
    try:
        async for chunk in answer.content.iter_any():
            yield chunk
    finally:
        answer.close()
