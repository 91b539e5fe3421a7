"""How a score_model grader reaches its judge from a training child (a job's graded eval, a
reinforcement job's reward): straight to the model server (TUNEDOCK_SERVING_URL, with the serving
key), which the runner's environment carries into the child.

The tenant check is the API's, done once when the job was created (POST /jobs validates the grader
with the gateway's judges: a base model served here or one of the tenant's own adapters); a job's
judge cannot change after. With several replicas the first one answers; one that has not loaded an
adapter judge fetches it through the resolver plugin on the first request.
"""

from __future__ import annotations

from typing import Any

import httpx

from service.errors import ServiceError
from service.settings import Settings


class JudgeUnavailable(ServiceError):
    """The judge model did not answer (the grader scores 0 with this reason)."""

    status_code = 503
    code = "model_server_unavailable"


class ModelServerJudges:
    def __init__(self, settings: Settings) -> None:
        urls = [u.strip().rstrip("/") for u in (settings.serving_url or "").split(",") if u.strip()]
        self.url = urls[0] if urls else None
        self.headers = {"Authorization": f"Bearer {settings.serving_api_key}"} if settings.serving_api_key else {}

    async def allowed(self, tenant: str, model: str) -> bool:
        return self.url is not None  # checked by the API when the job was created

    async def chat(self, tenant: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if self.url is None:
            raise JudgeUnavailable("no model server is configured for the runner (TUNEDOCK_SERVING_URL)")
        try:
            async with httpx.AsyncClient(timeout=timeout_s, headers=self.headers) as http:
                r = await http.post(f"{self.url}/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise JudgeUnavailable(f"the judge model did not answer ({type(exc).__name__})") from None
        if r.status_code >= 400:
            raise JudgeUnavailable(f"the judge model answered HTTP {r.status_code}: {r.text[:300]}")
        try:
            return r.json()
        except ValueError:
            raise JudgeUnavailable("the judge model's answer was not JSON") from None
