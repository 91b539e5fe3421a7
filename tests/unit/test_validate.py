"""Streaming validation without a server: line splitting, formats, counting, the split rule."""

from __future__ import annotations

from service.datasets.validate import TokenCounter, iter_lines, split_sizes, validate_jsonl


def test_iter_lines_splits_across_chunks_and_skips_long_lines() -> None:
    chunks = [b"ab", b"c\nde", b"f\n", b"x" * 50, b"y\nlast"]
    assert list(iter_lines(chunks, 10)) == [(1, b"abc"), (2, b"def"), (3, None), (4, b"last")]


def test_all_four_formats_are_accepted() -> None:
    rows = {
        "chat": b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
        "instruction": b'{"instruction": "do", "input": "", "output": "done"}',
        "prompt_completion": b'{"prompt": "p", "completion": "c"}',
        "text": b'{"text": "hello world"}',
    }
    for fmt, row in rows.items():
        report = validate_jsonl([(row + b"\n") * 12], TokenCounter(None), 1 << 20)
        assert report.ok and report.format == fmt and report.n_examples == 12
        assert report.tokens > 0 and report.tokens_estimated


def test_errors_are_capped_at_twenty_with_a_total() -> None:
    report = validate_jsonl([b"not json\n" * 100], TokenCounter(None), 1 << 20)
    assert report.n_errors == 100 and len(report.errors) == 20 and report.errors[0].line == 1


def test_split_rule() -> None:
    assert split_sizes(49, None) == (49, 0, "none")
    assert split_sizes(100, None) == (90, 10, "split")
    assert split_sizes(100, 7) == (100, 7, "file")
