"""Prefixed opaque ids (ftjob-…, file-…, ftckpt-…, ftevent-…), fine-tuned model names, API keys and
the hash an Idempotency-Key record keeps of its request."""

import hashlib
import re
import secrets
from typing import Any

import msgspec

_MODEL_NAME = re.compile(r"^ft:(?P<base>[^:]+):(?P<suffix>[a-z0-9-]*):(?P<job>ftjob-[0-9a-f]{24})"
                         r"(?::ckpt-(?P<epoch>[0-9]{1,3}))?$")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def new_api_key() -> str:
    return f"td-{secrets.token_urlsafe(32)}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def model_name(base: str, suffix: str | None, job_id: str, epoch: int | None = None) -> str:
    """A fine-tuned model's name: the job's final adapter, or one epoch's checkpoint."""
    name = f"ft:{base}:{suffix or ''}:{job_id}"
    return name if epoch is None else f"{name}:ckpt-{epoch}"


def parse_model_name(name: str) -> tuple[str, str, int | None] | None:
    """(base alias, job id, checkpoint epoch or None) of an `ft:` name, or None."""
    m = _MODEL_NAME.match(name)
    if m is None:
        return None
    return m["base"], m["job"], int(m["epoch"]) if m["epoch"] else None


_RESULT_FILE = re.compile(r"^file-results-(?P<job>[0-9a-f]{24})$")


def result_file_id(job_id: str) -> str:
    """The id of a succeeded job's result file (OpenAI's `result_files`): its per-step CSV, made
    from what the job recorded, so it needs no copy of its own and lives as long as the job."""
    return "file-results-" + job_id.removeprefix("ftjob-")


def result_file_job(file_id: str) -> str | None:
    """The job whose result file `file_id` is, or None for any other id."""
    m = _RESULT_FILE.match(file_id)
    return f"ftjob-{m['job']}" if m else None


def request_hash(request: Any) -> str:
    """The request as decoded, not its raw bytes: the same JSON with its keys in another order
    or other whitespace is the same request for its Idempotency-Key."""
    return hashlib.sha256(msgspec.json.encode(request, order="sorted")).hexdigest()
