"""What the sync and async clients share: configuration, request building, retries, parsing."""

from __future__ import annotations

import os
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx
import msgspec

from tunedock.errors import APIConnectionError, error_for
from tunedock.types import Page

T = TypeVar("T")
DEFAULT_BASE_URL = "http://127.0.0.1:8080"
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 8.0


@dataclass(frozen=True)
class Config:
    base_url: str
    api_key: str | None
    timeout: float
    max_retries: int

    @classmethod
    def resolve(cls, base_url: str | None, api_key: str | None, timeout: float,
                max_retries: int) -> Config:
        """Arguments first, then TUNEDOCK_BASE_URL / TUNEDOCK_API_KEY."""
        url = base_url or os.environ.get("TUNEDOCK_BASE_URL") or DEFAULT_BASE_URL
        key = api_key or os.environ.get("TUNEDOCK_API_KEY")
        return cls(url.rstrip("/"), key, timeout, max_retries)

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": "tunedock-python/0.1.0"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


def backoff(attempt: int, response: httpx.Response | None) -> float:
    """Exponential backoff with full jitter; a Retry-After header wins when it is shorter."""
    if response is not None:
        after = response.headers.get("retry-after", "")
        if after.replace(".", "", 1).isdigit():
            return min(float(after), MAX_BACKOFF_S)
    return random.uniform(0, min(MAX_BACKOFF_S, 0.25 * 2**attempt))


def should_retry(attempt: int, max_retries: int, response: httpx.Response | None) -> bool:
    if attempt >= max_retries:
        return False
    return response is None or response.status_code in RETRY_STATUS


def raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = response.text
    raise error_for(response.status_code, body, response.headers.get("x-request-id"))


def connection_error(exc: Exception) -> APIConnectionError:
    return APIConnectionError(f"could not reach the tunedock server: {exc}")


def decode(response: httpx.Response, type_: type[T]) -> T:
    return msgspec.json.decode(response.content, type=type_)


def decode_page(response: httpx.Response, item: type[T]) -> tuple[list[T], bool, str | None]:
    page = msgspec.json.decode(response.content, type=Page)
    return [msgspec.convert(x, item) for x in page.data], page.has_more, page.last_id


def new_idempotency_key() -> str:
    return f"tdk-{uuid.uuid4().hex}"


def job_body(base_model: str, training_file: str, validation_file: str | None, suffix: str | None,
             hyperparameters: dict[str, Any] | None, metadata: dict[str, str] | None,
             deploy: bool, method: dict[str, Any] | None = None, priority: int = 0,
             eval: dict[str, Any] | None = None, gpus: int | str = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"base_model": base_model, "training_file": training_file, "deploy": deploy}
    if priority:
        body["priority"] = priority
    if gpus != 1:
        body["gpus"] = gpus
    if eval:
        body["eval"] = eval
    if method:
        body["method"] = method
    if validation_file:
        body["validation_file"] = validation_file
    if suffix is not None:
        body["suffix"] = suffix
    if hyperparameters:
        body["hyperparameters"] = hyperparameters
    if metadata:
        body["metadata"] = metadata
    return body


def is_local_path(ref: str | Path) -> bool:
    """A training_file given as a local path (uploaded first) rather than an id or a URI."""
    if isinstance(ref, Path):
        return True
    return not (ref.startswith("file-") or "://" in ref) and Path(ref).is_file()


def file_payload(source: str | Path | bytes, filename: str | None) -> tuple[str, bytes | BinaryIO]:
    """(name, content): bytes as given, a path as an open file, which httpx streams from disk in
    chunks (and rewinds for a retry) instead of reading it all into memory. The caller closes it."""
    if isinstance(source, bytes):
        return filename or "upload.jsonl", source
    path = Path(source)
    return filename or path.name, path.open("rb")


def progress_text(job: Any) -> str:
    p = job.progress
    parts = [job.status]
    if p is not None:
        parts.append(f"epoch {p.epoch:.2f}")
        if p.total_steps:
            parts.append(f"step {p.step}/{p.total_steps}")
        if p.loss is not None:
            parts.append(f"loss {p.loss:.4f}")
    return " | ".join(parts)


def v1_url(config: Config) -> str:
    """The service's OpenAI-compatible front door."""
    return config.base_url.rstrip("/") + "/v1"


def preview_body(n_rows: int, base_model: str, method: str, train_on_inputs: bool,
                 max_seq_length: int) -> dict[str, Any]:
    return {"base_model": base_model, "n_rows": n_rows, "method": method,
            "train_on_inputs": train_on_inputs, "max_seq_length": max_seq_length}
