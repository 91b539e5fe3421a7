"""The child's end of the events pipe: one JSON line per message (service/training/messages.py)."""

from __future__ import annotations

import os
import sys
from typing import TextIO

import msgspec

from service.training.messages import Message


class Emitter:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Emitter:
        fd = env.get("TUNEDOCK_EVENTS_FD")
        # Libraries print to stdout; events get their own pipe when the runner gives one.
        return cls(os.fdopen(int(fd), "w", buffering=1) if fd else sys.stdout)

    def emit(self, message: Message) -> None:
        self.stream.write(msgspec.json.encode(message).decode() + "\n")
        self.stream.flush()
