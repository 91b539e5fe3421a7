"""The first rows of a training file as the base model will see them: rendered with its chat
template and tokenizer, cut into runs of trained (loss-bearing) and context text.

Used by POST /files/{id}/preview (the dashboard's "New job" page, the SDK and the CLI) so a user
can check, before any GPU time, that the template and the trained parts are what they meant.
The tokens are the renderer's own, so the preview is exactly what training will do.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from service.contracts import schema as s
from service.datasets.formats import Preference, detect_format, parse_example
from service.datasets.jsonl import iter_lines
from service.datasets.render import IGNORE, Renderer
from service.datasets.template import LocalTokens


def segments(tokens: LocalTokens, ids: list[int], labels: list[int]) -> list[s.PreviewSegment]:
    """Runs of ids that are all trained or all context, each decoded to its text."""
    out: list[s.PreviewSegment] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] != IGNORE) != (labels[start] != IGNORE):
            out.append(s.PreviewSegment(text=tokens.decode(ids[start:i]), trained=labels[start] != IGNORE,
                                        tokens=i - start))
            start = i
    return out


def _row(renderer: Renderer, tokens: LocalTokens, line: int, example: object, max_len: int
         ) -> s.PreviewRow:
    if isinstance(example, Preference):
        prompt, chosen, rejected = renderer.encode_pair(example)
        ignore = [IGNORE] * len(prompt)
        return s.PreviewRow(
            line=line, tokens=len(prompt) + max(len(chosen), len(rejected)),
            trained_tokens=len(chosen) + len(rejected), truncated=len(prompt) + max(len(chosen), len(rejected)) > max_len,
            segments=segments(tokens, prompt + chosen, ignore + chosen),
            rejected_segments=segments(tokens, prompt + rejected, ignore + rejected))
    ids, labels = renderer.encode(example)  # type: ignore[arg-type]
    kept = labels[:max_len]
    return s.PreviewRow(line=line, tokens=len(ids), trained_tokens=sum(t != IGNORE for t in kept),
                        truncated=len(ids) > max_len, segments=segments(tokens, ids[:max_len], kept))


def preview_rows(chunks: Iterable[bytes], tokens: LocalTokens, max_line_bytes: int, n_rows: int,
                 train_on_inputs: bool, max_seq_length: int) -> list[s.PreviewRow]:
    """The first n_rows examples that parse (bad lines are the validation report's business)."""
    renderer = Renderer(tokens, train_on_inputs)
    decoder = msgspec.json.Decoder()
    rows: list[s.PreviewRow] = []
    fmt = None
    for lineno, raw in iter_lines(chunks, max_line_bytes):
        if len(rows) >= n_rows:
            break
        if raw is None or not raw.strip():
            continue
        try:
            obj = decoder.decode(raw)
            fmt = fmt or detect_format(obj)
            rows.append(_row(renderer, tokens, lineno, parse_example(obj, fmt), max_seq_length))
        except (ValueError, msgspec.DecodeError):  # ExampleError is a ValueError
            continue
    return rows
