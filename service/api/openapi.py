"""What the OpenAPI document says that Litestar cannot infer from the handlers: every error a
route can answer, in the one shape every error really has (`{error: {code, message, param}}`),
and the multipart body of the streamed upload, which the handler parses itself."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPI, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema

from service.jobs import schema as wire
from service.jobs.schema import ErrorBody

_MEANING = {
    400: "The request is invalid: the message names the parameter and what to change.",
    401: "The Authorization header is missing, or its key is not valid.",
    404: "No such resource for this key's tenant (another tenant's ids answer the same way).",
    409: "The resource is in a state that does not allow this (e.g. cancelling a finished job), "
         "or the Idempotency-Key was used with another body.",
    413: "The body is larger than the configured limit.",
    422: "Well-formed, but not something this service can take as configured (e.g. a LoRA rank "
         "above what serving loads, a base model no serving instance serves, an empty file).",
    500: "An internal error; the message carries a request id to quote.",
    502: "The model server answered with an error the gateway could not pass on.",
    503: "A dependency (database, object store, model server) is unreachable; retry later.",
}

# Every route behind a key can answer these: a bad query or body, a bad key, an internal error.
AUTHED = (400, 401, 500)


def errors(*codes: int) -> dict[int, ResponseSpec]:
    """`responses=` for a route handler: the error statuses it answers, all with ErrorBody."""
    return {code: ResponseSpec(data_container=ErrorBody, description=_MEANING[code],
                               generate_examples=False) for code in sorted(set(codes))}


@dataclass
class MultipartUpload(Operation):
    """POST /files streams its multipart body itself, so the body is declared here."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(required=True, content={
            "multipart/form-data": OpenAPIMediaType(schema=Schema(
                type=OpenAPIType.OBJECT, required=["file"],
                properties={
                    "file": Schema(type=OpenAPIType.STRING, format="binary",
                                   description="the JSONL file (one part named 'file')"),
                    "purpose": Schema(type=OpenAPIType.STRING,
                                      description="OpenAI's field; 'fine-tune' (accepted and ignored "
                                                  "on /files)"),
                }))})


METADATA = Schema(
    type=OpenAPIType.OBJECT, max_properties=16, description="up to 16 string pairs, for filtering",
    property_names=Schema(type=OpenAPIType.STRING, min_length=1, max_length=64),
    additional_properties=Schema(type=OpenAPIType.STRING, max_length=512))


def complete(document: OpenAPI) -> None:
    """Constraints Litestar 2 drops: `additionalProperties: false` on request types that refuse
    unknown fields, metadata's key and value lengths, the pattern of each `target_modules` item."""
    schemas = (document.components.schemas if document.components else None) or {}
    for name, schema in schemas.items():
        struct = getattr(wire, name, None)
        if (isinstance(schema, Schema) and isinstance(struct, type) and issubclass(struct, msgspec.Struct)
                and struct.__struct_config__.forbid_unknown_fields):
            schema.additional_properties = False
    create = schemas.get("JobCreate")
    if isinstance(create, Schema) and create.properties:
        create.properties["metadata"] = METADATA
    hyper = schemas.get("Hyperparameters")
    if isinstance(hyper, Schema) and hyper.properties:
        items = hyper.properties["target_modules"]
        if isinstance(items, Schema) and isinstance(items.items, Schema):
            items.items.pattern = wire.LORA_MODULE_PATTERN
