"""Streaming validation of a JSONL training file: bounded memory for any file size. Per row it
keeps an 8-byte digest on disk (digests.py) and adds the row's length to a histogram (at most
max_seq_length + 1 counters); in memory that is nothing per row. tests/integration/
test_dataset_validation.py measures a 5-million-row file's peak RSS against the stated bound.

Reads the object in chunks, splits lines itself (so one 10 MB line is skipped, not buffered),
checks and normalises each example, and measures the file as it will be trained: tokens that
carry loss and tokens that are only context (rendered with the base model's own chat template
and tokenizer when they are local, else estimated from bytes), rows over max_seq_length,
duplicates, and the validation split.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable

import msgspec

from service.contracts.schema import LengthStats
from service.datasets.digests import Digests, held_rows
from service.datasets.formats import (
    CHAT,
    PREFERENCE_FORMATS,
    Chat,
    Example,
    ExampleError,
    Pair,
    Preference,
    Prompt,
    Text,
    detect_format,
    parse_example,
    parse_prompt,
    pieces,
)
from service.datasets.jsonl import iter_lines
from service.datasets.render import DROP, TRUNCATE, Renderer, supervised
from service.datasets.template import TemplateTokens

MAX_REPORTED_ERRORS = 20
MIN_EXAMPLES = 10
WARN_EXAMPLES = 50
# The automatic validation split: 10% of the rows, at most 1,000 (an evaluation pass over 40k
# rows every epoch costs more than it tells), and none below WARN_EXAMPLES rows.
SPLIT_FRACTION = 0.1
MAX_SPLIT_ROWS = 1000
# Chat templates add a few tokens per message; used when estimating without the tokenizer.
PER_PIECE_OVERHEAD = 4


class LineError(msgspec.Struct, frozen=True):
    line: int
    message: str


def length_stats(lengths: Counter[int]) -> LengthStats | None:
    """Tokens per example as trained (after truncation; dropped rows excluded), from a histogram
    {length: rows}: the same numbers a sorted list of every length gives."""
    n = sum(lengths.values())
    if not n:
        return None
    ordered = sorted(lengths.items())

    def at(q: float) -> int:
        rank, seen = min(n - 1, int(q * n)), 0
        for length, count in ordered:
            seen += count
            if seen > rank:
                return length
        return ordered[-1][0]

    return LengthStats(mean=round(sum(k * c for k, c in ordered) / n, 1), p50=at(0.5), p95=at(0.95),
                       max=ordered[-1][0])


class Report(msgspec.Struct, kw_only=True):
    format: str | None = None
    n_examples: int = 0
    n_blank_lines: int = 0
    tokens: int = 0  # all tokens of every valid example, before truncation
    supervised_tokens: int = 0  # loss-bearing tokens as trained (one epoch)
    context_tokens: int = 0  # the rest of the tokens as trained
    tokens_estimated: bool = True
    n_overlong: int = 0
    overlong_policy: str = TRUNCATE
    n_duplicates: int = 0
    lengths: LengthStats | None = None
    errors: list[LineError] = []
    n_errors: int = 0
    warnings: list[str] = []
    digests: Digests | None = None  # one per valid example, in order: duplicates and split overlap

    def add_error(self, line: int, message: str) -> None:
        self.n_errors += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(LineError(line, message))

    @property
    def n_trained(self) -> int:
        return self.n_examples - (self.n_overlong if self.overlong_policy == DROP else 0)

    @property
    def ok(self) -> bool:
        return self.n_errors == 0 and self.n_trained >= MIN_EXAMPLES

    def failure_message(self) -> str:
        if self.n_errors:
            shown = "; ".join(f"line {e.line}: {e.message}" for e in self.errors[:5])
            more = f" (showing {min(5, self.n_errors)} of {self.n_errors} errors)"
            return f"{shown}{more if self.n_errors > 5 else ''}"
        if self.n_examples == 0:
            return "the file has no examples"
        if self.n_trained < self.n_examples:
            return (f"only {self.n_trained} of {self.n_examples} examples fit max_seq_length and "
                    f"overlong_examples is 'drop'; at least {MIN_EXAMPLES} are needed")
        return f"the file has {self.n_examples} valid examples; at least {MIN_EXAMPLES} are needed"


class Options(msgspec.Struct, kw_only=True, frozen=True):
    """What of the job's hyperparameters decides how a row is counted."""

    max_seq_length: int = 2048
    train_on_inputs: bool = False
    overlong_examples: str = TRUNCATE
    method: str = "supervised"  # dpo takes preference pairs; reinforcement prompts; supervised the rest
    # Reinforcement: the row fields its grader's templates read ({{item.<field>}}); a row without
    # one could only ever score 0.
    item_fields: tuple[str, ...] = ()


def _estimate(example: Example, train_on_inputs: bool) -> tuple[int, int]:
    """(tokens, supervised tokens) from byte lengths, when the tokenizer is not local."""
    count = _count
    total = count(pieces(example))
    if train_on_inputs or isinstance(example, Text):
        return total, total
    if isinstance(example, Pair):
        return total, count([example.completion])
    trained = [m for m in example.messages if m["role"] == "assistant" and m.get("weight", 1)]
    return total, count(pieces(Chat(trained)))


def _count(texts: list[str]) -> int:
    return sum(len(t.encode()) // 4 + PER_PIECE_OVERHEAD for t in texts)


def _check_method(fmt: str, method: str) -> None:
    if method == "reinforcement":
        if fmt != CHAT:
            raise ExampleError(f"this line is {fmt} data, but a reinforcement job trains on prompts: "
                               "{\"messages\": [... ending with the user's turn], plus the fields the "
                               "grader reads}")
        return
    if method == "dpo" and fmt not in PREFERENCE_FORMATS:
        raise ExampleError(f"this line is {fmt} data, but a dpo job trains on preference pairs: "
                           "{\"input\": {\"messages\": [...]}, \"preferred_output\": [...], "
                           "\"non_preferred_output\": [...]} or {\"prompt\", \"chosen\", \"rejected\"}")
    if method != "dpo" and fmt in PREFERENCE_FORMATS:
        raise ExampleError(f"this line is a preference pair ({fmt}); train it with "
                           "method: {\"type\": \"dpo\"}, or give chat, prompt/completion or text data")


def _measure_pair(pair: Preference, renderer: Renderer | None, options: Options
                  ) -> tuple[int, int, int, int]:
    """(longest sequence, all tokens, loss-bearing tokens as trained, tokens as trained) of a
    pair: DPO runs prompt+chosen and prompt+rejected, so the prompt counts twice."""
    if renderer is not None:
        p, c, r = map(len, renderer.encode_pair(pair))
    else:
        prompt = pair.prompt if isinstance(pair.prompt, str) else "".join(pieces(pair.prompt))
        p, c, r = _count([prompt]), _count([pair.chosen]), _count([pair.rejected])
    room = options.max_seq_length - p
    if room < 1:
        raise ExampleError(f"the prompt alone is {p} tokens, so max_seq_length "
                           f"({options.max_seq_length}) leaves no room for an answer")
    kept_c, kept_r = min(c, room), min(r, room)
    return p + max(c, r), 2 * p + c + r, kept_c + kept_r, 2 * p + kept_c + kept_r


def _measure_prompt(prompt: Prompt, tokens: TemplateTokens | None, options: Options) -> int:
    """A reinforcement prompt's tokens, as the chat template renders it for generation."""
    if tokens is not None:
        n = len(tokens.encode(tokens.render(prompt.chat.messages, prompt.chat.tools, True)))
    else:
        n = _count(pieces(prompt.chat))
    if n >= options.max_seq_length:
        raise ExampleError(f"the prompt alone is {n} tokens, so max_seq_length "
                           f"({options.max_seq_length}) leaves no room for an answer")
    missing = [f for f in options.item_fields if f not in prompt.item]
    if missing:
        raise ExampleError(f"the grader reads item.{missing[0]}, which this line lacks")
    return n


def validate_jsonl(chunks: Iterable[bytes], tokens: TemplateTokens | None, max_line_bytes: int,
                   options: Options = Options(), expect_format: str | None = None) -> Report:
    """Check every line and measure the file as it will be trained (see Report)."""
    report = Report(tokens_estimated=tokens is None, overlong_policy=options.overlong_examples)
    if expect_format:
        report.format = expect_format
    renderer = Renderer(tokens, options.train_on_inputs) if tokens is not None else None
    decoder = msgspec.json.Decoder()
    report.digests = digests = Digests()
    lengths: Counter[int] = Counter()
    for lineno, raw in iter_lines(chunks, max_line_bytes):
        if raw is None:
            report.add_error(lineno, f"line is longer than {max_line_bytes} bytes")
            continue
        if not raw.strip():
            report.n_blank_lines += 1
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
            _check_method(fmt, options.method)
            example = parse_prompt(obj) if options.method == "reinforcement" else parse_example(obj, fmt)
            if isinstance(example, Prompt):  # nothing supervised: the answers are sampled
                n = total = trained = _measure_prompt(example, tokens, options)
                n_supervised = 0
            elif isinstance(example, Preference):
                n, total, n_supervised, trained = _measure_pair(example, renderer, options)
            else:
                if renderer is not None:
                    ids, labels = renderer.encode(example)
                    n, n_supervised = len(ids), supervised(labels[: options.max_seq_length])
                else:
                    n, n_supervised = _estimate(example, options.train_on_inputs)
                total, trained = n, min(n, options.max_seq_length)
                n_supervised = min(n_supervised, options.max_seq_length)
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
        digests.add(hashlib.blake2b(msgspec.json.encode(obj, order="sorted"), digest_size=8).digest())
        report.tokens += total
        if n > options.max_seq_length:
            report.n_overlong += 1
            if options.overlong_examples == DROP:
                continue
        lengths[min(n, options.max_seq_length)] += 1
        report.supervised_tokens += n_supervised
        report.context_tokens += trained - n_supervised
    report.lengths = length_stats(lengths)
    report.n_duplicates = digests.duplicates()
    if report.n_overlong:
        what = "dropped" if options.overlong_examples == DROP else "truncated"
        report.warnings.append(f"{report.n_overlong} examples are longer than max_seq_length "
                               f"({options.max_seq_length} tokens) and will be {what}")
    if report.ok and report.n_examples < WARN_EXAMPLES:
        report.warnings.append(
            f"only {report.n_examples} examples; {WARN_EXAMPLES} or more usually train better"
        )
    return report


def auto_validation_size(n_examples: int) -> int:
    if n_examples < WARN_EXAMPLES:
        return 0
    return min(MAX_SPLIT_ROWS, max(1, int(n_examples * SPLIT_FRACTION)))


def split_sizes(n_train_file: int, n_validation_file: int | None) -> tuple[int, int, str]:
    """(n_train, n_validation, source): an explicit validation file is used as given; else
    auto_validation_size rows are split off."""
    if n_validation_file is not None:
        return n_train_file, n_validation_file, "file"
    n_val = auto_validation_size(n_train_file)
    return n_train_file - n_val, n_val, "split" if n_val else "none"


def validation_overlap(train: Digests, validation: Digests | None, seed: int) -> int:
    """Validation rows that are also training rows: in the file given, or in the seeded split
    (the rows render.split_examples will hold out)."""
    if validation is not None:
        return train.overlap(validation, set())
    return train.overlap(None, held_rows(train.n, auto_validation_size(train.n), seed))
