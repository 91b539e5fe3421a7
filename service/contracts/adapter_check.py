"""The serving-contract record (issue 33): what the training child saw its adapter do, stored with
the adapter's files as `tunedock_check.json`, so that the serving side can ask the served adapter
the same and refuse one that vLLM does not apply as trained (serving/check.py).

Each sequence is a fixed run of token ids (an eval prompt and the answer this adapter gave it
greedily, or a training example) with, for every position after the first, the log-probability
the trained model gave that token. vLLM is asked for its prompt log-probabilities over the same ids
(teacher forcing: every position is compared, not only those before a first divergent token).
"""

from __future__ import annotations

import msgspec

FILE = "tunedock_check.json"
MAX_TOKENS = 256  # per sequence: long enough to cover an answer, short enough to check in milliseconds


class CheckSequence(msgspec.Struct, kw_only=True, frozen=True):
    label: str  # what a person recognises: the eval prompt, or "training example 1"
    ids: list[int]
    logprobs: list[float]  # logprobs[i] is log p(ids[i + 1] | ids[: i + 1]) under the trained adapter


class AdapterCheck(msgspec.Struct, kw_only=True, frozen=True):
    version: int = 1
    quantized: bool  # the trained model's base was 4-bit (QLoRA); vLLM serves the 16-bit base
    sequences: list[CheckSequence]
