"""The errors a route can answer, for its OpenAPI document: each status with what it means, all in
the one shape every error has (`{error: {code, message, param}}`, ErrorBody). Below every
domain's routes (service/api, service/exports, service/webhooks), so none of them imports
another's package for it."""

from __future__ import annotations

from litestar.openapi.datastructures import ResponseSpec

from service.contracts.schema import ErrorBody

_MEANING = {
    400: "The request is invalid: the message names the parameter and what to change.",
    401: "The Authorization header is missing, or its key is not valid.",
    404: "No such resource for this key's tenant (another tenant's ids answer the same way).",
    409: "The resource is in a state that does not allow this (e.g. cancelling a finished job), "
         "or the Idempotency-Key was used with another body.",
    413: "The body is larger than the configured limit.",
    422: "Well-formed, but not something this service can take as configured or as a whole (e.g. "
         "a LoRA rank above what serving loads, a base model no serving instance serves, an empty "
         "file, fields that contradict each other, a webhook URL it must not call).",
    500: "An internal error; the message carries a request id to quote.",
    502: "The model server answered with an error the gateway could not pass on.",
    503: "A dependency (database, object store, model server) is unreachable, or (chat) the adapter "
         "named is still being loaded and checked (`model_loading`); retry later.",
}

# Every route behind a key can answer these: a bad query or body, a bad key, an internal error.
AUTHED = (400, 401, 500)


def errors(*codes: int) -> dict[int, ResponseSpec]:
    """`responses=` for a route handler: the error statuses it answers, all with ErrorBody."""
    return {code: ResponseSpec(data_container=ErrorBody, description=_MEANING[code],
                               generate_examples=False) for code in sorted(set(codes))}
