"""OpenAI's published OpenAPI document as the contract of /v1: every response body (and every
stream chunk) is validated against the schema OpenAI's document gives that operation.

The document is vendored, gzipped, in tests/contract/openai/ (openai/openai-openapi `openapi.yaml`
at commit f85dbe223d40, 2026-08-21, MIT) and checked against its hash on load. It is OpenAPI 3.1
with some 3.0 leftovers (boolean `exclusiveMinimum`/`exclusiveMaximum` beside `minimum`/`maximum`,
`nullable`) that a JSON Schema 2020-12 validator reads wrongly; they are rewritten first.

Where OpenAI's document disagrees with OpenAI's documented behaviour, the difference is listed in
EXCEPTIONS, with why: nowhere else may a violation be let through.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import msgspec
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOCUMENT = Path(__file__).parents[1] / "contract" / "openai" / "openapi.yaml.gz"
COMMIT = "f85dbe223d40"
SHA256 = "db5d7478feae10b4d331834c60d9765a8aa042e38419f9b1694288c11aa8ebc8"  # of the unzipped yaml
URI = "urn:openai-openapi"

# (OpenAI's schema, instance path, failing keyword, the value) -> why OpenAI's own document is
# wrong there. A "*" in the instance path matches any one segment (a list index).
EXCEPTIONS: dict[tuple[str, str, str, Any], str] = {
    ("FineTuningJob", "status", "enum", "paused"):
        "OpenAI's API pauses and resumes jobs (POST .../pause and .../resume are in this very "
        "document, and its SDK has jobs.pause/resume) and a paused job's status is `paused`, but "
        "the document's status enum omits it.",
    ("ListPaginatedFineTuningJobsResponse", "data/*/status", "enum", "paused"):
        "the same `paused`, in a list of jobs.",
}


# /v1 operations the pinned document does not have, with why they are not checked here.
NOT_IN_DOCUMENT: dict[str, str] = {
    "/v1/webhook_endpoints":
        "OpenAI's webhook endpoint API is newer than the pinned document (commit f85dbe223d40); "
        "its shapes are those of the `openai` SDK (3.63), which parses every answer in "
        "tests/integration/test_webhooks.py.",
}


def _rewrite(node: Any) -> Any:
    """OpenAPI 3.0 leftovers into JSON Schema 2020-12."""
    if isinstance(node, list):
        return [_rewrite(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _rewrite(v) for k, v in node.items()}
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if out.get(exclusive) is True:
            out[exclusive] = out.pop(bound)
        elif out.get(exclusive) is False:
            del out[exclusive]
    if out.pop("nullable", False):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def document() -> dict[str, Any]:
    raw = gzip.decompress(DOCUMENT.read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    assert digest == SHA256, f"the vendored OpenAI document is not commit {COMMIT}'s ({digest})"
    return _rewrite(yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


@functools.cache
def _registry() -> Registry:
    return Registry().with_resource(URI, Resource(contents=document(), specification=DRAFT202012))


def _validator(schema_ref: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"{URI}{schema_ref}"}, registry=_registry())


def _matches(pattern: str, path: str) -> bool:
    want, got = pattern.split("/"), path.split("/")
    return len(want) == len(got) and all(w in ("*", g) for w, g in zip(want, got))


def violations(schema_ref: str, instance: Any) -> list[str]:
    """What in `instance` breaks OpenAI's schema at `schema_ref` (a "#/components/..." pointer),
    less the listed EXCEPTIONS. Each violation reads "instance path: message (schema keyword)"."""
    found = []
    for error in _validator(schema_ref).iter_errors(instance):
        for leaf in _leaves(error):
            where = "/".join(str(p) for p in leaf.absolute_path)
            keyword = "/".join(str(p) for p in leaf.absolute_schema_path)
            name = schema_ref.rsplit("/", 1)[-1]
            if any(schema == name and _matches(path, where) and leaf.validator == validator
                   and leaf.instance == value for schema, path, validator, value in EXCEPTIONS):
                continue
            found.append(f"{where or '(body)'}: {leaf.message[:300]} ({keyword})")
    return found


def _leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """anyOf/oneOf failures reported by their best-matching branch's own errors."""
    if error.context:
        best = jsonschema.exceptions.best_match(error.context)
        return _leaves(best) if best is not None else [error]
    return [error]


def _operation(method: str, path: str) -> dict[str, Any] | None:
    """OpenAI's operation for a /v1 request path (our paths are OpenAI's under /v1)."""
    path = path.removeprefix("/v1")
    for template, ops in document()["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path):
            return ops.get(method.lower())
    return None


def response_schema(method: str, path: str, status: int, content_type: str) -> str | None:
    """The "#/components/..." schema OpenAI's document gives this response, or None when it
    gives none (a raw file download)."""
    if status >= 400:
        return "#/components/schemas/ErrorResponse"
    op = _operation(method, path)
    if op is None and any(path.startswith(prefix) for prefix in NOT_IN_DOCUMENT):
        return None
    assert op is not None, f"OpenAI's API has no {method} {path}: not a /v1 operation to check"
    content = op["responses"][str(status)].get("content", {})
    media = "text/event-stream" if content_type.startswith("text/event-stream") else "application/json"
    schema = (content.get(media) or {}).get("schema", {})
    return schema.get("$ref")


def sse_chunks(body: bytes) -> list[Any]:
    """The JSON chunks of a server-sent event stream (`data: [DONE]` ends it)."""
    out = []
    for line in body.decode().splitlines():
        if line.startswith("data:") and (data := line[5:].strip()) != "[DONE]":
            out.append(msgspec.json.decode(data))
    return out


class Conformance:
    """An httpx response hook: every /v1 response is read and checked against OpenAI's schema
    for it; `seen` counts the checked bodies per operation, `failures` keeps each violation."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.failures: list[str] = []

    def __call__(self, response: httpx.Response) -> None:
        request = response.request
        if not request.url.path.startswith("/v1/"):
            return
        response.read()
        content_type = response.headers.get("content-type", "")
        ref = response_schema(request.method, request.url.path, response.status_code, content_type)
        name = f"{request.method} {request.url.path} {response.status_code}"
        if ref is None:
            return
        bodies = (sse_chunks(response.content) if content_type.startswith("text/event-stream")
                  else [response.json()])
        for body in bodies:
            self.seen[ref] = self.seen.get(ref, 0) + 1
            self.failures += [f"{name} {ref}: {v}" for v in violations(ref, body)]

    async def async_hook(self, response: httpx.Response) -> None:
        await response.aread()
        self(response)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(event_hooks={"response": [self]}, **kwargs)
