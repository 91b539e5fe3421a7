"""Typed exceptions carrying the server's status, error code, message and request id."""

from __future__ import annotations

from typing import Any


class TunedockError(Exception):
    pass


class APIConnectionError(TunedockError):
    """The server could not be reached, or the connection broke before an answer."""


class APIError(TunedockError):
    status_code: int = 0

    def __init__(self, status_code: int, code: str, message: str, param: str | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(f"{status_code} {code}: {message}" + (f" (param: {param})" if param else ""))
        self.status_code = status_code
        self.code = code
        self.message = message
        self.param = param
        self.request_id = request_id


class BadRequestError(APIError):
    pass


class AuthenticationError(APIError):
    pass


class PermissionDeniedError(APIError):
    pass


class NotFoundError(APIError):
    pass


class ConflictError(APIError):
    pass


class RateLimitError(APIError):
    pass


class ServerError(APIError):
    pass


class JobFailed(TunedockError):
    """wait() saw the job end failed or cancelled."""

    def __init__(self, job: Any) -> None:
        error = job.error
        detail = f"{error.code}: {error.message}" if error else job.status
        super().__init__(f"job {job.id} ended {job.status}: {detail}")
        self.job = job
        self.code = error.code if error else job.status


class ExportFailed(TunedockError):
    """An export ended failed (its error says why), or its download did not match its sha256."""

    def __init__(self, export: Any, detail: str | None = None) -> None:
        error = export.error
        detail = detail or (f"{error.code}: {error.message}" if error else export.status)
        super().__init__(f"export {export.id} ({export.format}) failed: {detail}")
        self.export = export


_BY_STATUS = {400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError,
              404: NotFoundError, 409: ConflictError, 413: BadRequestError, 422: BadRequestError,
              429: RateLimitError}


def error_for(status: int, body: Any, request_id: str | None) -> APIError:
    err = body.get("error", {}) if isinstance(body, dict) else {}
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    return cls(status, err.get("code") or "unknown", err.get("message") or str(body)[:500],
               err.get("param"), request_id)
