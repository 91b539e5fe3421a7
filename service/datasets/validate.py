"""Streaming validation of a JSONL training file: bounded memory for any file size.

Reads the object in chunks, splits lines itself (so one 10 MB line is skipped, not buffered),
checks each example, counts examples and tokens, and resolves the validation split.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from service.datasets.formats import ExampleError, check_example, detect_format

MAX_REPORTED_ERRORS = 20
MIN_EXAMPLES = 10
WARN_EXAMPLES = 50
SPLIT_FRACTION = 0.1
# Chat templates add a few tokens per message; used when counting with a bare tokenizer.
PER_PIECE_OVERHEAD = 4


class LineError(msgspec.Struct, frozen=True):
    line: int
    message: str


class Report(msgspec.Struct, kw_only=True):
    format: str | None = None
    n_examples: int = 0
    tokens: int = 0
    tokens_estimated: bool = True
    errors: list[LineError] = []
    n_errors: int = 0
    warnings: list[str] = []

    def add_error(self, line: int, message: str) -> None:
        self.n_errors += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(LineError(line, message))

    @property
    def ok(self) -> bool:
        return self.n_errors == 0 and self.n_examples >= MIN_EXAMPLES

    def failure_message(self) -> str:
        if self.n_errors:
            shown = "; ".join(f"line {e.line}: {e.message}" for e in self.errors[:5])
            more = f" (showing {min(5, self.n_errors)} of {self.n_errors} errors)"
            return f"{shown}{more if self.n_errors > 5 else ''}"
        if self.n_examples == 0:
            return "the file has no examples"
        return f"the file has {self.n_examples} valid examples; at least {MIN_EXAMPLES} are needed"


def iter_lines(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) for each non-final-empty line; None for a line over the limit."""
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
            yield lineno, (None if too_long else bytes(buf))
            buf.clear()
            too_long = False
            lineno += 1
            start = nl + 1
    if buf or too_long:
        yield lineno, (None if too_long else bytes(buf))


class TokenCounter:
    """Counts with the base model's tokenizer.json when it is local, else estimates (bytes / 4)."""

    def __init__(self, model_dir: Path | None) -> None:
        self.tokenizer = None
        path = model_dir / "tokenizer.json" if model_dir else None
        if path is not None and path.is_file():
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(path))

    @property
    def estimated(self) -> bool:
        return self.tokenizer is None

    def count(self, pieces: list[str]) -> int:
        if self.tokenizer is None:
            return sum(len(p.encode()) // 4 + PER_PIECE_OVERHEAD for p in pieces)
        encs = self.tokenizer.encode_batch(pieces, add_special_tokens=False)
        return sum(len(e.ids) + PER_PIECE_OVERHEAD for e in encs)


def validate_jsonl(chunks: Iterable[bytes], counter: TokenCounter, max_line_bytes: int,
                   expect_format: str | None = None) -> Report:
    report = Report(tokens_estimated=counter.estimated)
    if expect_format:
        report.format = expect_format
    decoder = msgspec.json.Decoder()
    for lineno, raw in iter_lines(chunks, max_line_bytes):
        if raw is None:
            report.add_error(lineno, f"line is longer than {max_line_bytes} bytes")
            continue
        if not raw.strip():
            continue
        try:
            raw.decode("utf-8")
            obj = decoder.decode(raw)
            fmt = detect_format(obj)
            if report.format is None:
                report.format = fmt
            elif fmt != report.format:
                raise ExampleError(f"this line is {fmt} but the file is {report.format}; "
                                   "use one format per file")
            pieces = check_example(obj, fmt)
        except UnicodeDecodeError as exc:
            report.add_error(lineno, f"invalid UTF-8 at byte {exc.start}")
            continue
        except msgspec.DecodeError as exc:
            report.add_error(lineno, f"invalid JSON: {exc}")
            continue
        except ExampleError as exc:
            report.add_error(lineno, str(exc))
            continue
        report.n_examples += 1
        report.tokens += counter.count(pieces)
    if report.ok and report.n_examples < WARN_EXAMPLES:
        report.warnings.append(
            f"only {report.n_examples} examples; {WARN_EXAMPLES} or more usually train better"
        )
    return report


def split_sizes(n_train_file: int, n_validation_file: int | None) -> tuple[int, int, str]:
    """(n_train, n_validation, source): split 10% off when no validation file and >= 50 examples."""
    if n_validation_file is not None:
        return n_train_file, n_validation_file, "file"
    if n_train_file >= WARN_EXAMPLES:
        n_val = max(1, int(n_train_file * SPLIT_FRACTION))
        return n_train_file - n_val, n_val, "split"
    return n_train_file, 0, "none"
