"""Deterministic synthetic training rows of a given length (throughput does not depend on content)."""

from __future__ import annotations

import json
import random

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
         "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu river stone "
         "cloud garden silver market window engine signal harbor lantern meadow").split()


def text_rows(n: int, words_per_row: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choice(WORDS) for _ in range(words_per_row))} for _ in range(n)]


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
