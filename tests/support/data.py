"""Small training sets made in the test (no data set is downloaded)."""

from __future__ import annotations

import json


def chat_rows(n: int, answer: str = "Blue.") -> list[dict]:
    return [
        {"messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": f"Question number {i}: what colour is the sky?"},
            {"role": "assistant", "content": answer},
        ]}
        for i in range(n)
    ]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()
