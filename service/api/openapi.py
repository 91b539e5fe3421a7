"""What the OpenAPI document says that Litestar cannot infer from the handlers: every error a
route can answer, in the one shape every error really has (`{error: {code, message, param}}`),
and the chat body the gateway relays unparsed. (The streamed upload's multipart body is declared
beside its handler, service/files/routes.py.)"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.spec import OpenAPI, OpenAPIMediaType, OpenAPIType, Operation, Reference, RequestBody, Schema

from service.contracts import schema as wire
from service.openai_types import FineTuningJobCreate


@dataclass
class ChatBody(Operation):
    """The gateway forwards the body to vLLM as it is; what it reads itself is `model`."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(required=True, content={
            "application/json": OpenAPIMediaType(schema=Schema(
                type=OpenAPIType.OBJECT, required=["model"],
                properties={
                    "model": Schema(type=OpenAPIType.STRING, min_length=1,
                                    description="a base model or one of your fine-tuned models"),
                    "stream": Schema(type=OpenAPIType.BOOLEAN),
                },
                description="OpenAI's chat/completions body; every other field goes to vLLM as sent"))})


# Request types whose documented schema is msgspec's own: Litestar 2 drops constraints inside
# unions and constraints whose bound is 0 (`Annotated[float, Meta(gt=0)] | None` loses `gt`), and
# the items' pattern of a sequence, so clients and fuzzers were told less than the server checks.
REQUEST_TYPES = (wire.JobCreate, FineTuningJobCreate, wire.DeploymentReport, wire.ExportCreate)
_KEYS = {"$ref": "ref", "anyOf": "any_of", "oneOf": "one_of", "allOf": "all_of"}


def _from_json_schema(node: Any) -> Any:
    """msgspec's JSON Schema (a dict) as Litestar's Schema objects."""
    if isinstance(node, list):
        return [_from_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return Reference(ref=node["$ref"])
    fields: dict[str, Any] = {}
    for key, value in node.items():
        name = _KEYS.get(key) or re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()
        if name == "properties":
            value = {k: _from_json_schema(v) for k, v in value.items()}
        elif name in ("items", "additional_properties", "property_names", "any_of", "one_of", "all_of"):
            value = _from_json_schema(value)
        elif name == "type":
            value = OpenAPIType(value) if isinstance(value, str) else [OpenAPIType(v) for v in value]
        fields[name] = value
    return Schema(**fields)


def complete(document: OpenAPI, request_types: tuple[type, ...] = ()) -> None:
    """Constraints Litestar 2 drops: request types documented from msgspec's own schema,
    `additionalProperties: false` on every request type that refuses unknown fields, and
    downloads documented as binary strings."""
    schemas = (document.components.schemas if document.components else None) or {}
    _, components = msgspec.json.schema_components(REQUEST_TYPES + request_types,
                                                   ref_template="#/components/schemas/{name}")
    for name, raw in components.items():
        # Replaced where Litestar has it; added where msgspec names it differently (a name two
        # modules share), so every $ref in the document resolves.
        schemas[name] = _from_json_schema(raw)
    for path in (document.paths or {}).values():  # downloads: bytes, not an unnamed object
        for op in (path.get, path.post):
            for response in ((op.responses or {}).values() if op else ()):
                media = (getattr(response, "content", None) or {}).get("application/octet-stream")
                if media is not None:
                    media.schema = Schema(type=OpenAPIType.STRING, format="binary")
    for schema in schemas.values():
        _const_to_enum(schema)
    structs = _structs_by_name()
    for name, schema in schemas.items():
        struct = structs.get(name)
        if isinstance(schema, Schema) and struct is not None and struct.__struct_config__.forbid_unknown_fields:
            schema.additional_properties = False


def _const_to_enum(node: Any) -> None:
    """A one-value Literal in a union (`int | Literal["auto"]`) as `enum: [value]`, as msgspec
    writes it, not Litestar's `const`: openapi-python-client's generated parser tried the const
    branch alone and refused every other value (a Job's `gpus: 1`)."""
    if not isinstance(node, Schema):
        return
    for branch in (node.one_of or []) + (node.any_of or []):
        if isinstance(branch, Schema) and branch.const is not None and branch.enum is None:
            branch.enum, branch.const = [branch.const], None
    for child in [*(node.properties or {}).values(), *(node.one_of or []), *(node.any_of or []),
                  *(node.all_of or []), node.items, node.additional_properties]:
        _const_to_enum(child)


def _structs_by_name() -> dict[str, type[msgspec.Struct]]:
    """Every msgspec Struct class by its name (the component name Litestar gives it), wherever it
    is declared; a name two classes share is left out (Litestar qualifies those)."""
    found: dict[str, type[msgspec.Struct]] = {}
    shared: set[str] = set()
    todo = list(msgspec.Struct.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__name__ in found and found[cls.__name__] is not cls:
            shared.add(cls.__name__)
        found[cls.__name__] = cls
    return {k: v for k, v in found.items() if k not in shared}
