"""The four accepted JSONL formats (DESIGN.md) and the check of one example."""

from __future__ import annotations

from typing import Any

CHAT, INSTRUCTION, PROMPT_COMPLETION, TEXT = "chat", "instruction", "prompt_completion", "text"
ROLES = frozenset({"system", "user", "assistant"})


class ExampleError(ValueError):
    pass


def detect_format(obj: Any) -> str:
    """The format of one parsed line, by its keys; ExampleError if it fits none."""
    if not isinstance(obj, dict):
        raise ExampleError("each line must be a JSON object")
    keys = set(obj)
    if "messages" in keys:
        return CHAT
    if {"instruction", "output"} <= keys:
        return INSTRUCTION
    if {"prompt", "completion"} <= keys:
        return PROMPT_COMPLETION
    if "text" in keys:
        return TEXT
    raise ExampleError(
        "unknown format: expected 'messages', 'instruction'+'output', 'prompt'+'completion' or "
        f"'text', got keys {sorted(keys)[:8]}"
    )


def _string(obj: dict, key: str, *, optional: bool = False) -> str:
    value = obj.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise ExampleError(f"'{key}' must be a string")
    return value


def check_example(obj: dict, fmt: str) -> list[str]:
    """Check one example of format `fmt`; returns its text pieces (for counting tokens)."""
    if fmt == CHAT:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise ExampleError("'messages' must be a non-empty list")
        pieces = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise ExampleError(f"messages[{i}] needs a role of system, user or assistant")
            if not isinstance(m.get("content"), str):
                raise ExampleError(f"messages[{i}].content must be a string")
            pieces.append(m["content"])
        if not any(m["role"] == "assistant" for m in messages):
            raise ExampleError("a chat example needs at least one assistant message")
        return pieces
    if fmt == INSTRUCTION:
        out = _string(obj, "output")
        if not out:
            raise ExampleError("'output' must not be empty")
        return [_string(obj, "instruction"), _string(obj, "input", optional=True), out]
    if fmt == PROMPT_COMPLETION:
        completion = _string(obj, "completion")
        if not completion:
            raise ExampleError("'completion' must not be empty")
        return [_string(obj, "prompt"), completion]
    text = _string(obj, "text")
    if not text.strip():
        raise ExampleError("'text' must not be empty")
    return [text]
