"""JSON lines from the training child to the runner (progress, plan, checkpoint, warning, error)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

import msgspec


class Emitter:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Emitter:
        fd = env.get("TUNEDOCK_EVENTS_FD")
        # Libraries print to stdout; events get their own pipe when the runner gives one.
        return cls(os.fdopen(int(fd), "w", buffering=1) if fd else sys.stdout)

    def emit(self, type_: str, **data: Any) -> None:
        line = msgspec.json.encode({"type": type_, "time": time.time(), **data}).decode()
        self.stream.write(line + "\n")
        self.stream.flush()
