"""The shape of a Llama-like decoder, read from its config.json: what the memory plan sizes and
what the serving side checks an adapter against."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Shape:
        cfg = cfg.get("text_config", cfg)
        heads = cfg["num_attention_heads"]
        return cls(hidden=cfg["hidden_size"], intermediate=cfg["intermediate_size"],
                   layers=cfg["num_hidden_layers"], heads=heads,
                   kv_heads=cfg.get("num_key_value_heads") or heads, vocab=cfg["vocab_size"],
                   tied=bool(cfg.get("tie_word_embeddings", False)))

    @property
    def label(self) -> str:
        """What duration estimates are calibrated by: models of one label train alike."""
        return (f"llama-h{self.hidden}-i{self.intermediate}-l{self.layers}-a{self.heads}"
                f"-kv{self.kv_heads}-v{self.vocab}")

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear in one decoder layer."""
        h, i = self.hidden, self.intermediate
        kv = self.kv_heads * (h // self.heads)
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linears().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embedding_params + self.layers * 2 * self.hidden


def read_config(source: str) -> dict[str, Any]:
    """config.json of a local model folder, or of a hub id through transformers."""
    path = Path(source) / "config.json"
    if path.is_file():
        return json.loads(path.read_text())
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source).to_dict()


def local_shape(folder: str | None) -> Shape | None:
    """The shape of a local model folder; None for a hub id (its config is not read here)."""
    if folder is None or not (Path(folder) / "config.json").is_file():
        return None
    try:
        return Shape.from_config(read_config(folder))
    except (KeyError, TypeError, ValueError):  # not a decoder config this service can size
        return None
