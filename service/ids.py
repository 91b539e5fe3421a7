"""Prefixed opaque ids (ftjob-…, file-…, ftckpt-…, ftevent-…) and API keys."""

import hashlib
import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def new_api_key() -> str:
    return f"td-{secrets.token_urlsafe(32)}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
