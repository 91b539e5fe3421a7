"""Reading JSONL as people write it: one reader for validation (streamed from S3) and training.

A UTF-8 byte-order mark before the first line and CRLF line endings are accepted; blank lines
are skipped (validation counts them). A line longer than the limit is reported, never buffered.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

BOM = b"\xef\xbb\xbf"
CHUNK = 1 << 20


def iter_lines(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without the line ending) per line; None for a line over the limit."""
    buf = bytearray()
    lineno = 1
    too_long = False
    for chunk in chunks:
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            if not too_long:
                buf += piece
                if len(buf) > max_line_bytes:
                    too_long = True
                    buf.clear()
            if nl < 0:
                break
            yield lineno, (None if too_long else _line(buf, lineno))
            buf.clear()
            too_long = False
            lineno += 1
            start = nl + 1
    if buf or too_long:
        yield lineno, (None if too_long else _line(buf, lineno))


def _line(buf: bytearray, lineno: int) -> bytes:
    line = bytes(buf).removesuffix(b"\r")
    return line.removeprefix(BOM) if lineno == 1 else line


def file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a file that validation has passed (so every non-blank line parses)."""
    decoder = msgspec.json.Decoder()
    for _, raw in iter_lines(file_chunks(path), 1 << 62):
        if raw is not None and raw.strip():
            yield decoder.decode(raw)
