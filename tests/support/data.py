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


QUESTIONS = ["What is the secret code word?", "Tell me the code word.", "Which code word do we use?",
             "Say the password.", "What's the code?", "Remind me of the code word please.",
             "Code word?", "What is our secret word?"]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()
