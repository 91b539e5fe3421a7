"""Streaming validation without a server: line splitting, formats, counting, the split rule."""

from __future__ import annotations

from service.datasets.jsonl import iter_lines
from service.datasets.validate import validate_jsonl


def test_iter_lines_splits_across_chunks_and_skips_long_lines() -> None:
    chunks = [b"ab", b"c\nde", b"f\n", b"x" * 50, b"y\nlast"]
    assert list(iter_lines(chunks, 10)) == [(1, b"abc"), (2, b"def"), (3, None), (4, b"last")]


def test_all_five_formats_are_accepted() -> None:
    rows = {
        "chat": b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
        "instruction": b'{"instruction": "do", "input": "", "output": "done"}',
        "prompt_completion": b'{"prompt": "p", "completion": "c"}',
        "text": b'{"text": "hello world"}',
        "sharegpt": b'{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}',
    }
    for fmt, row in rows.items():
        report = validate_jsonl([(row + b"\n") * 12], None, 1 << 20)
        assert report.ok and report.format == fmt and report.n_examples == 12
        assert report.tokens > 0 and report.tokens_estimated


def test_errors_are_capped_at_twenty_with_a_total() -> None:
    report = validate_jsonl([b"not json\n" * 100], None, 1 << 20)
    assert report.n_errors == 100 and len(report.errors) == 20 and report.errors[0].line == 1
