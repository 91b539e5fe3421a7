"""text_similarity's `cosine`: the cosine of the two texts' embeddings, from an OpenAI-style
`/v1/embeddings` this server is pointed at (TUNEDOCK_EMBEDDING_URL). OpenAI grades cosine with its
own embedding model; a self-hosted tunedock has none built in, and vLLM serves embeddings only from
an instance started for pooling (`--runner pooling`), not from the one that serves chat, so the
embedding model is a server of its own (compose's `embeddings` profile starts one).

Both texts go in one request, so they are embedded by the same model in one batch."""

from __future__ import annotations

import math

import httpx

from service.errors import ServiceError
from service.settings import Settings


class EmbeddingsUnavailable(ServiceError):
    """The embedding model did not answer as expected (the grader scores 0 with this reason)."""

    status_code = 503
    code = "embedding_server_unavailable"


def configured(settings: Settings) -> bool:
    return bool(settings.embedding_url)


def cosine(a: list[float], b: list[float]) -> float:
    if len(a) != len(b) or not a:
        raise EmbeddingsUnavailable(f"the embedding model answered vectors of {len(a)} and {len(b)} numbers")
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    if norm == 0.0:
        return 0.0  # an all-zero embedding points nowhere: nothing in common
    return max(-1.0, min(1.0, dot / norm))


class Embeddings:
    def __init__(self, settings: Settings) -> None:
        self.url = (settings.embedding_url or "").rstrip("/")
        self.model = settings.embedding_model
        self.timeout_s = settings.score_model_timeout_seconds
        key = settings.embedding_api_key
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def similarity(self, text: str, reference: str) -> tuple[float, str]:
        """The cosine of the two texts' embeddings, and the model that made them."""
        if not self.url:  # a runner not told what the API was (the API refuses cosine without it)
            raise EmbeddingsUnavailable("no embedding model is configured for this process (TUNEDOCK_EMBEDDING_URL)")
        async with httpx.AsyncClient(timeout=self.timeout_s, headers=self.headers) as http:
            model = self.model or await self._first_model(http)
            body = await self._call(http, "POST", "/embeddings", json={"model": model, "input": [text, reference]})
        try:
            data = sorted(body["data"], key=lambda d: d["index"])
            a, b = ([float(x) for x in d["embedding"]] for d in data)
        except (KeyError, TypeError, ValueError) as exc:
            raise EmbeddingsUnavailable(f"the embedding model's answer has another shape than OpenAI's "
                                        f"({type(exc).__name__})") from None
        return cosine(a, b), str(body.get("model") or model)

    async def _first_model(self, http: httpx.AsyncClient) -> str:
        body = await self._call(http, "GET", "/models")
        try:
            return str(body["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise EmbeddingsUnavailable(f"{self.url}/models lists no model; set TUNEDOCK_EMBEDDING_MODEL") from None

    async def _call(self, http: httpx.AsyncClient, method: str, path: str, **kw: object) -> dict:
        try:
            r = await http.request(method, f"{self.url}{path}", **kw)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise EmbeddingsUnavailable(f"the embedding model at {self.url} did not answer "
                                        f"({type(exc).__name__})") from None
        if r.status_code >= 400:
            raise EmbeddingsUnavailable(f"the embedding model answered HTTP {r.status_code}: {r.text[:300]}")
        try:
            return r.json()
        except ValueError:
            raise EmbeddingsUnavailable("the embedding model's answer was not JSON") from None
