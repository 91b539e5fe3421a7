"""Turn normalised examples into token ids and labels (-100 where no loss is taken).

What is trained (loss-bearing), by kind of example:
  Chat   each assistant message with weight 1 (the default), as the base model's chat template
         renders it: its content or tool calls and the template's end-of-turn tokens. System,
         user and tool messages and weight-0 assistant messages are context only, unless
         train_on_inputs (which never overrides weight 0).
  Pair   the completion and the end-of-sequence token (the prompt too with train_on_inputs).
  Text   all of it.
  Preference (DPO)  each answer after the shared prompt, with the template's end-of-turn tokens
         (or the end-of-sequence token after a raw-text prompt): encode_pair.
Examples longer than max_seq_length are truncated or dropped (`overlong_examples`).
"""

from __future__ import annotations

import random
from typing import Any

import jinja2

from service.datasets.formats import Chat, Example, ExampleError, Pair, Preference
from service.datasets.template import TemplateTokens

IGNORE = -100
TRUNCATE, DROP = "truncate", "drop"


def validation_indices(n_rows: int, n_validation: int, seed: int) -> set[int]:
    """Which rows a job's automatic split holds out: seeded, the same on every attempt."""
    if n_validation <= 0:
        return set()
    order = list(range(n_rows))
    random.Random(seed).shuffle(order)
    return set(order[:n_validation])


def split_examples(rows: list[Any], n_validation: int, seed: int) -> tuple[list[Any], list[Any]]:
    held = validation_indices(len(rows), n_validation, seed)
    return ([r for i, r in enumerate(rows) if i not in held],
            [r for i, r in enumerate(rows) if i in held])


class Renderer:
    def __init__(self, tokens: TemplateTokens, train_on_inputs: bool) -> None:
        self.tokens = tokens
        self.train_on_inputs = train_on_inputs

    def _renderer(self, chat: Chat):  # noqa: ANN202
        """render(messages, generation_prompt) -> text, for this chat's tools."""
        if chat.uses_tools and not self.tokens.supports_tools:
            raise ExampleError("this conversation uses tools, but the base model's chat template "
                               "cannot render tool definitions, tool calls and tool results; "
                               "remove these rows or choose a base model whose template has tools")

        def render(part: list[dict], generation_prompt: bool) -> str:
            try:
                return self.tokens.render(part, chat.tools, generation_prompt)
            except jinja2.TemplateError as exc:  # e.g. raise_exception("roles must alternate")
                raise ExampleError(f"the base model's chat template refused this conversation: "
                                   f"{exc}") from None

        return render

    def _chat(self, chat: Chat) -> tuple[list[int], list[int]]:
        messages, render, encode = chat.messages, self._renderer(chat), self.tokens.encode

        ids: list[int] = []
        labels: list[int] = []
        for k, msg in enumerate(messages):
            answer = msg["role"] == "assistant"
            full = encode(render(messages[: k + 1], False))
            prefix = encode(render(messages[:k], True)) if answer else ids
            if full[: len(ids)] != ids or full[: len(prefix)] != prefix:
                # The template is not prefix-stable: fall back to labelling the whole turn.
                prefix = ids
            train = (answer and msg.get("weight", 1) == 1) or (self.train_on_inputs and not answer)
            head = full[len(ids):len(prefix)]
            labels += head if self.train_on_inputs else [IGNORE] * len(head)
            body = full[len(prefix):]
            labels += body if train else [IGNORE] * len(body)
            ids = full
        return ids, labels

    def encode_pair(self, pair: Preference) -> tuple[list[int], list[int], list[int]]:
        """(prompt ids, chosen ids, rejected ids) before any truncation. The answers start where
        the prompt and prompt+answer diverge, as TRL's DPO does, should a template render the
        prompt alone differently."""
        encode = self.tokens.encode
        if isinstance(pair.prompt, str):
            eos = self.tokens.eos_token
            return encode(pair.prompt), encode(pair.chosen + eos), encode(pair.rejected + eos)
        render, messages = self._renderer(pair.prompt), pair.prompt.messages
        prompt = encode(render(messages, True))
        full = [encode(render([*messages, {"role": "assistant", "content": a}], False))
                for a in (pair.chosen, pair.rejected)]
        k = min(_common_prefix(prompt, f) for f in full)
        return prompt[:k], full[0][k:], full[1][k:]

    def encode(self, example: Example) -> tuple[list[int], list[int]]:
        """(input ids, labels) of the whole example, before any truncation."""
        if isinstance(example, Preference):
            raise ExampleError("preference pairs train with method.type 'dpo'")
        if isinstance(example, Chat):
            return self._chat(example)
        if isinstance(example, Pair):
            p = self.tokens.encode(example.prompt)
            c = self.tokens.encode(example.completion + self.tokens.eos_token)
            return p + c, (p if self.train_on_inputs else [IGNORE] * len(p)) + c
        ids = self.tokens.encode(example.text + self.tokens.eos_token)
        return ids, list(ids)


def fit(ids: list[int], labels: list[int], max_len: int, policy: str) -> dict[str, list[int]] | None:
    """The example as trained: truncated to max_len, or None when it is dropped."""
    if len(ids) > max_len:
        if policy == DROP:
            return None
        ids, labels = ids[:max_len], labels[:max_len]
    return {"input_ids": ids, "labels": labels}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def fit_pair(prompt: list[int], chosen: list[int], rejected: list[int], max_len: int,
             policy: str) -> dict[str, list[int]] | None:
    """A preference pair as trained: each answer cut to fit after the prompt, or None when it is
    dropped or the prompt alone leaves no room for an answer."""
    room = max_len - len(prompt)
    if len(prompt) + max(len(chosen), len(rejected)) > max_len:
        if policy == DROP or room < 1:
            return None
        chosen, rejected = chosen[:room], rejected[:room]
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected,
            "length": len(prompt) + max(len(chosen), len(rejected))}


def supervised(labels: list[int]) -> int:
    """Loss-bearing tokens of one example."""
    return sum(1 for t in labels if t != IGNORE)


class FlatCollator:
    """Padding-free: the micro-batch's examples end to end in one row of exactly their tokens.

    Positions restart at each example, which is how both backends keep attention inside it
    (transformers builds a block-diagonal causal mask from restarting position ids; Unsloth reads
    the lengths from them for its varlen kernels). The first token of each example carries no
    label, so no example is trained to predict from the one before it (padded rows never use
    that label either). With `with_lengths` (Unsloth) the example lengths are passed as well,
    as Unsloth's own TRL integration does, so its kernels need not infer them on the GPU."""

    def __init__(self, with_lengths: bool = False) -> None:
        self.with_lengths = with_lengths

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for x in batch:
            ids += x["input_ids"]
            labels += [IGNORE, *x["labels"][1:]]
            positions += range(len(x["input_ids"]))
        # use_cache=False: transformers reads packed sequences from position ids only when no KV
        # cache is passed, and a model whose config says use_cache makes one even in training.
        out = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
               "position_ids": torch.tensor([positions]), "use_cache": False}
        if self.with_lengths:
            out["packed_seq_lengths"] = torch.tensor([len(x["input_ids"]) for x in batch],
                                                     dtype=torch.int32)
        return out


class Collator:
    """Pads a batch to its longest row; labels pad with -100."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        n = max(len(x["input_ids"]) for x in batch)
        ids = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, x in enumerate(batch):
            k = len(x["input_ids"])
            ids[i, :k] = torch.tensor(x["input_ids"])
            labels[i, :k] = torch.tensor(x["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
