"""Domain exceptions. Each carries the HTTP status and error code it maps to (see app.py)."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code:
            self.code = code


class InvalidRequest(ServiceError):
    pass


class Unprocessable(ServiceError):
    """Well-formed, but this service's configuration cannot take it (e.g. a LoRA rank above what
    serving loads). 422, so a client can tell it from a malformed request."""

    status_code = 422
    code = "unprocessable"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class LeaseLost(Conflict):
    """The runner's lease on this job ended (expired and requeued, cancelled, or claimed by
    another runner): its writes are refused, so a runner that was frozen cannot overwrite the
    attempt that replaced it."""

    code = "lease_lost"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class Unauthorized(ServiceError):
    status_code = 401
    code = "invalid_api_key"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "file_too_large"


class RangeNotSatisfiable(ServiceError):
    """A download's Range header is malformed or outside the file."""

    status_code = 416
    code = "range_not_satisfiable"
