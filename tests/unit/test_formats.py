"""Every accepted data shape, rendered with the test model's real tokenizer and chat template: the
exact token ids that are trained, the ones that are only context, and what is refused and why.

The rows are written from each format's public documentation (OpenAI's fine-tuning guide, its
tool-calling and weight examples; ShareGPT; Alpaca)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service.datasets.digests import Digests
from service.datasets.formats import ExampleError, detect_format, parse_example
from service.datasets.render import IGNORE, Renderer, validation_indices
from service.datasets.template import HFTokens, LocalTokens
from service.datasets.validate import Options, split_sizes, validate_jsonl, validation_overlap

TEMPLATES = Path(__file__).parent.parent / "support" / "templates"

# OpenAI's multi-turn example: the first answer is excluded with weight 0; `content` as text parts.
OPENAI_CHAT = {"messages": [
    {"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
    {"role": "user", "content": [{"type": "text", "text": "What's the capital of France?"}]},
    {"role": "assistant", "content": "Paris", "weight": 0},
    {"role": "user", "content": "Can you be more sarcastic?", "name": "ann"},
    {"role": "assistant", "content": "Paris, as if everyone doesn't know that already.", "weight": 1},
]}
# OpenAI's tool-calling example: an assistant turn with tool_calls and no content, then the result.
OPENAI_TOOLS = {
    "messages": [
        {"role": "user", "content": "What is the weather in San Francisco?"},
        {"role": "assistant", "tool_calls": [{"id": "call_id", "type": "function", "function": {
            "name": "get_current_weather",
            "arguments": "{\"location\": \"San Francisco, USA\", \"format\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_id", "content": "21.0"},
        {"role": "assistant", "content": "It is 21 degrees celsius in San Francisco, CA"},
    ],
    "tools": [{"type": "function", "function": {
        "name": "get_current_weather", "description": "Get the current weather",
        "parameters": {"type": "object", "properties": {
            "location": {"type": "string"}, "format": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["location", "format"]}}}],
}
SHAREGPT = {"conversations": [
    {"from": "system", "value": "You answer briefly."},
    {"from": "human", "value": "Name a primary colour."},
    {"from": "gpt", "value": "Red."},
    {"from": "human", "value": "Another?"},
    {"from": "gpt", "value": "Blue."},
]}
ALPACA = {"instruction": "Give the opposite.", "input": "hot", "output": "cold"}
PROMPT_COMPLETION = {"prompt": "2 + 2 =", "completion": " 4"}
TEXT = {"text": "The pelican is the bird of the bay."}


def trained_spans(tokens: LocalTokens, ids: list[int], labels: list[int]) -> list[str]:
    """The decoded runs of loss-bearing tokens."""
    spans, run = [], []
    for i, label in zip(ids, labels, strict=True):
        if label != IGNORE:
            assert label == i
            run.append(i)
        elif run:
            spans.append(run)
            run = []
    if run:
        spans.append(run)
    return [tokens.tokenizer.decode(s, skip_special_tokens=False) for s in spans]


@pytest.fixture(scope="module")
def smol(smollm2_dir: Path) -> LocalTokens:
    return LocalTokens(smollm2_dir)


@pytest.fixture(scope="module")
def tool_model_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test model's tokenizer with a chat template that renders tools."""
    d = tmp_path_factory.mktemp("tool-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2_dir / name, d / name)
    shutil.copy(TEMPLATES / "tools.jinja", d / "chat_template.jinja")
    return d


def render(tokens: LocalTokens, row: dict, train_on_inputs: bool = False) -> tuple[list[int], list[int]]:
    return Renderer(tokens, train_on_inputs).encode(parse_example(row, detect_format(row)))


EXPECTED = {  # shape -> (row, format, the exact text of every trained span)
    "openai_chat": (OPENAI_CHAT, "chat", ["Paris, as if everyone doesn't know that already.<|im_end|>\n"]),
    "sharegpt": (SHAREGPT, "sharegpt", ["Red.<|im_end|>\n", "Blue.<|im_end|>\n"]),
    "alpaca": (ALPACA, "instruction", ["cold<|im_start|>"]),  # the test model's eos is <|im_start|>
    "prompt_completion": (PROMPT_COMPLETION, "prompt_completion", [" 4<|im_start|>"]),
    "text": (TEXT, "text", ["The pelican is the bird of the bay.<|im_start|>"]),
}


@pytest.mark.parametrize("shape", sorted(EXPECTED))
def test_each_shape_trains_exactly_the_documented_tokens(smol: LocalTokens, shape: str) -> None:
    row, fmt, spans = EXPECTED[shape]
    assert detect_format(row) == fmt
    ids, labels = render(smol, row)
    assert trained_spans(smol, ids, labels) == spans
    trained_ids = [t for t in labels if t != IGNORE]
    assert trained_ids == [i for s in spans for i in smol.encode(s)]
    example = parse_example(row, fmt)
    if fmt in ("chat", "sharegpt"):  # the input is the template's own rendering of the whole chat
        assert ids == smol.encode(smol.render(example.messages, None, False))


def test_weight_zero_turn_carries_no_loss_even_with_train_on_inputs(smol: LocalTokens) -> None:
    ids, labels = render(smol, OPENAI_CHAT, train_on_inputs=True)
    spans = "".join(trained_spans(smol, ids, labels))
    assert "Marv is a factual chatbot" in spans and "be more sarcastic?" in spans
    assert "Paris<|im_end|>" not in spans  # the weight-0 answer, and only it, stays out


def test_content_parts_render_like_a_string(smol: LocalTokens) -> None:
    as_string = json.loads(json.dumps(OPENAI_CHAT))
    as_string["messages"][1]["content"] = "What's the capital of France?"
    assert render(smol, as_string) == render(smol, OPENAI_CHAT)


def test_tool_calls_render_through_a_template_with_tools(tool_model_dir: Path) -> None:
    tokens = LocalTokens(tool_model_dir)
    assert tokens.supports_tools
    ids, labels = render(tokens, OPENAI_TOOLS)
    call = ('<tool_call>\n{"name": "get_current_weather", "arguments": '
            '{"location": "San Francisco, USA", "format": "celsius"}}\n</tool_call><|im_end|>\n')
    assert trained_spans(tokens, ids, labels) == [
        call, "It is 21 degrees celsius in San Francisco, CA<|im_end|>\n"]
    text = tokens.tokenizer.decode(ids, skip_special_tokens=False)
    assert '"description": "Get the current weather"' in text  # the tools are in the context
    assert "<tool_response>\n21.0\n</tool_response>" in text  # the result is context only


def test_a_template_without_tools_is_refused_with_the_line(smol: LocalTokens) -> None:
    assert not smol.supports_tools
    body = (json.dumps(OPENAI_CHAT) + "\n") * 11 + json.dumps(OPENAI_TOOLS) + "\n"
    report = validate_jsonl([body.encode()], smol, 1 << 20)
    assert not report.ok and report.n_errors == 1
    assert report.errors[0].line == 12
    assert "uses tools" in report.errors[0].message and "chat template" in report.errors[0].message


def test_hf_and_local_tokens_agree(smollm2_dir: Path, tool_model_dir: Path) -> None:
    """The API validates with LocalTokens, the child trains with HFTokens: same ids, same labels."""
    from transformers import AutoTokenizer

    for folder, rows in ((smollm2_dir, [r for r, _, _ in EXPECTED.values()]),
                         (tool_model_dir, [OPENAI_TOOLS, OPENAI_CHAT])):
        local, hf = LocalTokens(folder), HFTokens(AutoTokenizer.from_pretrained(folder))
        assert local.supports_tools == hf.supports_tools
        for row in rows:
            for train_on_inputs in (False, True):
                assert render(local, row, train_on_inputs) == render(hf, row, train_on_inputs)


@pytest.mark.parametrize(("row", "words"), [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                   {"role": "assistant", "content": "a"}]}, "only text parts"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]},
     "weight must be 0 or 1"),
    ({"messages": [{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}]},
     "assistant messages only"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]},
     "nothing would be trained"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}, "not valid JSON"),
    ({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "a"}]},
     r"messages\[0\]\.content must be a string"),
    ({"conversations": [{"from": "bot", "value": "x"}]}, "system, human or gpt"),
])
def test_bad_rows_say_what_is_wrong(row: dict, words: str) -> None:
    with pytest.raises(ExampleError, match=words):
        parse_example(row, detect_format(row))


def test_bom_crlf_and_blank_lines_are_read(smol: LocalTokens) -> None:
    body = b"\xef\xbb\xbf" + b"\r\n".join([json.dumps(SHAREGPT).encode()] * 12) + b"\r\n\r\n\n"
    report = validate_jsonl([body[:2], body[2:]], smol, 1 << 20)  # the BOM split across chunks
    assert report.ok, report.errors
    assert report.format == "sharegpt" and report.n_examples == 12 and report.n_blank_lines == 2


def test_summary_counts_what_will_be_trained(smol: LocalTokens) -> None:
    long_row = {"prompt": "word " * 200, "completion": " end"}
    rows = [{"prompt": f"q{i}", "completion": f" a{i}"} for i in range(20)] + [long_row] * 3
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    for policy, n_trained in (("truncate", 23), ("drop", 20)):
        report = validate_jsonl([body], smol, 1 << 20, Options(max_seq_length=64,
                                                              overlong_examples=policy))
        assert report.n_examples == 23 and report.n_overlong == 3 and report.n_duplicates == 2
        assert report.lengths is not None and report.lengths.max <= 64
        ids = [render(smol, r) for r in rows[:20]]
        short_supervised = sum(sum(1 for t in lab if t != IGNORE) for _, lab in ids)
        short_total = sum(len(i) for i, _ in ids)
        extra = 3 * 64 if policy == "truncate" else 0  # truncated rows lose their completion
        assert report.supervised_tokens == short_supervised
        assert report.supervised_tokens + report.context_tokens == short_total + extra
        assert report.n_trained == n_trained
        assert any(policy[:4] in w for w in report.warnings)


def test_validation_split_is_capped_and_overlap_is_found() -> None:
    assert split_sizes(49, None) == (49, 0, "none")
    assert split_sizes(100, None) == (90, 10, "split")
    assert split_sizes(400_000, None) == (399_000, 1000, "split")
    assert split_sizes(400_000, 7) == (400_000, 7, "file")
    def digests(*values: bytes) -> Digests:
        found = Digests()
        for v in values:
            found.add(v.ljust(8, b"\0"))
        return found

    rows = [bytes([i % 60]) for i in range(120)]  # every row appears twice
    assert validation_overlap(digests(*rows), None, seed=1) > 0
    assert digests(*rows).duplicates() == 60
    assert validation_overlap(digests(*rows[:60]), None, seed=1) == 0
    assert validation_overlap(digests(*rows[:60]), digests(rows[0], b"new"), seed=1) == 1
    # The split's overlap counts exactly the held rows whose twin is trained on.
    held = validation_indices(120, 12, 1)
    expected = sum(1 for i in held if (i + 60) % 120 not in held)
    assert validation_overlap(digests(*rows), None, seed=1) == expected


# OpenAI's DPO example (fine-tuning guide, "Preference fine-tuning").
OPENAI_PREFERENCE = {
    "input": {"messages": [{"role": "user", "content": "Hello, can you tell me how cold San Francisco is today?"}],
              "tools": [], "parallel_tool_calls": True},
    "preferred_output": [{"role": "assistant", "content": "Today in San Francisco, it is not quite cold as expected. Morning clouds will give away to sunshine, with a high near 68°F (20°C) and a low around 57°F (14°C)."}],
    "non_preferred_output": [{"role": "assistant", "content": "It is not particularly cold in San Francisco today."}],
}
# TRL's "standard" preference rows (raw text) and its conversational ones.
CHOSEN_REJECTED = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
CHOSEN_REJECTED_CHAT = {"prompt": [{"role": "user", "content": "What color is the sky?"}],
                        "chosen": [{"role": "assistant", "content": "It is blue."}],
                        "rejected": [{"role": "assistant", "content": "It is green."}]}


def test_preference_pairs_share_the_prompt_and_train_each_answer(smol: LocalTokens) -> None:
    renderer = Renderer(smol, False)
    for row, fmt in ((OPENAI_PREFERENCE, "preference"), (CHOSEN_REJECTED_CHAT, "chosen_rejected")):
        assert detect_format(row) == fmt
        pair = parse_example(row, fmt)
        prompt, chosen, rejected = renderer.encode_pair(pair)
        messages = pair.prompt.messages
        # The prompt is the template's rendering with the assistant header; each answer is what
        # follows it in the full conversation, end-of-turn included.
        assert prompt == smol.encode(smol.render(messages, None, True))
        for answer, ids in ((pair.chosen, chosen), (pair.rejected, rejected)):
            full = smol.encode(smol.render([*messages, {"role": "assistant", "content": answer}], None, False))
            assert prompt + ids == full
            assert smol.tokenizer.decode(ids).startswith(answer)
    prompt, chosen, rejected = renderer.encode_pair(parse_example(CHOSEN_REJECTED, "chosen_rejected"))
    assert smol.tokenizer.decode(prompt) == "The sky is"  # raw text: no template, eos after each answer
    assert smol.tokenizer.decode(chosen, skip_special_tokens=False) == " blue.<|im_start|>"
    assert smol.tokenizer.decode(rejected, skip_special_tokens=False) == " green.<|im_start|>"


@pytest.mark.parametrize(("row", "method", "words"), [
    (OPENAI_PREFERENCE, "supervised", "train it with method"),
    (OPENAI_CHAT, "dpo", "a dpo job trains on preference pairs"),
    ({**CHOSEN_REJECTED, "rejected": " blue."}, "dpo", "the two answers are the same"),
    ({"input": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
      "preferred_output": [{"role": "assistant", "content": "a"}],
      "non_preferred_output": [{"role": "assistant", "content": "b"}]}, "dpo", "ends with an assistant"),
    ({**OPENAI_PREFERENCE, "preferred_output": [{"role": "user", "content": "a"}]}, "dpo",
     "one assistant message"),
])
def test_preference_rows_and_methods_that_do_not_match_say_why(smol: LocalTokens, row: dict,
                                                                 method: str, words: str) -> None:
    report = validate_jsonl([json.dumps(row).encode()], smol, 1 << 20, Options(method=method))
    assert report.n_errors == 1 and words in report.errors[0].message, report.errors


def test_preference_summary_counts_both_sequences(smol: LocalTokens) -> None:
    rows = [CHOSEN_REJECTED_CHAT] * 12
    report = validate_jsonl([("\n".join(json.dumps(r) for r in rows)).encode()], smol, 1 << 20,
                            Options(method="dpo"))
    assert report.ok and report.format == "chosen_rejected"
    pair = Renderer(smol, False).encode_pair(parse_example(CHOSEN_REJECTED_CHAT, "chosen_rejected"))
    p, c, r = map(len, pair)
    assert report.supervised_tokens == 12 * (c + r) and report.context_tokens == 12 * 2 * p
    assert report.lengths.max == p + max(c, r)
