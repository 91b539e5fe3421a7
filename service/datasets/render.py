"""Turn validated examples into token ids and labels (-100 where no loss is taken).

Chat data is rendered with the base model's chat template; the loss falls on assistant turns
only, unless train_on_inputs. Other formats: loss on `output` / `completion`, or on all of `text`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.datasets.formats import CHAT, INSTRUCTION, PROMPT_COMPLETION, detect_format

IGNORE = -100
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as f:
        for raw in f:
            if raw.strip():
                yield json.loads(raw)


def split_examples(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded split, the same on every attempt of a job."""
    if fraction <= 0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(rows) * fraction))
    val_idx = set(order[:n_val])
    return ([r for i, r in enumerate(rows) if i not in val_idx],
            [r for i, r in enumerate(rows) if i in val_idx])


class Renderer:
    def __init__(self, tokenizer: Any, max_seq_length: int, train_on_inputs: bool) -> None:
        self.tok = tokenizer
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = FALLBACK_TEMPLATE
        self.max_len = max_seq_length
        self.train_on_inputs = train_on_inputs
        self.eos = tokenizer.eos_token or ""

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _template(self, messages: list[dict], gen: bool) -> list[int]:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        return self._ids(text)

    def _chat(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        for k, msg in enumerate(messages):
            if msg["role"] == "assistant":
                prefix = self._template(messages[:k], gen=True)
                full = self._template(messages[: k + 1], gen=False)
            else:
                prefix = ids
                full = self._template(messages[: k + 1], gen=False)
            if full[: len(ids)] != ids or full[: len(prefix)] != prefix:
                # The template is not prefix-stable: fall back to labelling the whole turn.
                prefix = ids
            take = msg["role"] == "assistant" or self.train_on_inputs
            labels += (full[len(ids):len(prefix)] if self.train_on_inputs else
                       [IGNORE] * (len(prefix) - len(ids)))
            labels += full[len(prefix):] if take else [IGNORE] * (len(full) - len(prefix))
            ids = full
        return ids, labels

    def _pair(self, prompt: str, completion: str) -> tuple[list[int], list[int]]:
        p, c = self._ids(prompt), self._ids(completion + self.eos)
        return p + c, (p if self.train_on_inputs else [IGNORE] * len(p)) + c

    def encode(self, row: dict) -> dict[str, list[int]]:
        fmt = detect_format(row)
        if fmt == CHAT:
            ids, labels = self._chat(row["messages"])
        elif fmt == INSTRUCTION:
            extra = f"\n\n### Input:\n{row['input']}" if row.get("input") else ""
            ids, labels = self._pair(f"### Instruction:\n{row['instruction']}{extra}\n\n### Response:\n",
                                     row["output"])
        elif fmt == PROMPT_COMPLETION:
            ids, labels = self._pair(row["prompt"], row["completion"])
        else:
            ids = self._ids(row["text"] + self.eos)
            labels = list(ids)
        return {"input_ids": ids[: self.max_len], "labels": labels[: self.max_len]}


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
