"""Object keys, checked once: no caller can name `..`, an empty segment or a control character."""

from __future__ import annotations

from service.errors import InvalidRequest


def is_safe_key(key: str) -> bool:
    """A relative key with no empty, `.` or `..` segment and no control characters."""
    return bool(key) and not any(ord(c) < 32 for c in key) and "\\" not in key and not any(
        part in ("", ".", "..") for part in key.split("/"))


def check_key(key: str, param: str = "key") -> str:
    if not is_safe_key(key):
        raise InvalidRequest(f"object key {key!r} is not allowed: it must be relative, with no empty, "
                             "'.' or '..' segment and no control character", param=param)
    return key
