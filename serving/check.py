"""The serving-contract check (issue 33): before a deployment counts as `loaded`, the served
adapter is asked for its log-probabilities over the token sequences the training child recorded
with that adapter (service/contracts/adapter_check.py), and they must agree with the trained
model's within a stated tolerance.

Why: vLLM can serve an adapter other than as it was trained and say nothing: modules it does not
apply, a rank or scaling read differently, an adapter for another base, files swapped in the
store. A user then gets the base model's answers under the adapter's name.

How: one /v1/completions request per sequence with `prompt_logprobs` (teacher forcing, so every
position is compared, not only those before a first divergent token). Compared on the probability
scale, |p_served - p_trained| per token: two numerically different but equal models (vLLM's
kernels in bf16 against the child's fp32, a 4-bit base in training against the 16-bit one vLLM
serves) differ little where the model is sure and only at tokens that are unlikely anyway, which
log-probabilities would blow up; an adapter that is not applied misses exactly where training
made the model sure.
"""

from __future__ import annotations

import math
from pathlib import Path

import msgspec

from service.contracts.adapter_check import FILE, AdapterCheck


class CheckFailed(Exception):
    """The served adapter does not answer as the trained one; the message says where."""


class Outcome(msgspec.Struct, frozen=True):
    tokens: int
    worst: float  # the largest |p_served - p_trained| over all compared tokens
    mean: float
    where: str  # the worst token, in words


def compare(record: AdapterCheck, served: list[list[tuple[float, str]]], tolerance: float) -> Outcome:
    """`served[k][i]`: vLLM's log-probability of record.sequences[k].ids[i + 1] and that token's
    text (the list may be cut shorter, to vLLM's context). Raises CheckFailed when any token is off
    by more than `tolerance`."""
    worst, where, total, tokens = -1.0, "", 0.0, 0
    for seq, got in zip(record.sequences, served, strict=True):
        for i, (trained, (lp, text)) in enumerate(zip(seq.logprobs, got)):
            diff = abs(math.exp(lp) - math.exp(trained))
            total += diff
            tokens += 1
            if diff > worst:
                worst, where = diff, (f"in {seq.label[:80]!r}, token {i + 1} {text!r}: trained "
                                      f"p={math.exp(trained):.3f}, served p={math.exp(lp):.3f}")
    if tokens == 0:
        raise CheckFailed("the adapter's check record has no tokens to compare")
    outcome = Outcome(tokens=tokens, worst=round(worst, 4), mean=round(total / tokens, 4), where=where)
    if worst > tolerance:
        hint = ("; it was trained on the 4-bit base and vLLM serves the 16-bit one: if that is all "
                "that differs, raise TUNEDOCK_SERVING_CHECK_TOLERANCE" if record.quantized else "")
        raise CheckFailed(f"the served adapter does not answer as the trained one: {where} (largest "
                          f"difference {worst:.3f}, tolerance {tolerance}; mean {outcome.mean:.4f} over "
                          f"{tokens} tokens){hint}")
    return outcome


def read(folder: Path) -> AdapterCheck | None:
    path = folder / FILE
    if not path.is_file():
        return None
    try:
        return msgspec.json.decode(path.read_bytes(), type=AdapterCheck)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CheckFailed(f"{FILE} is unreadable: {exc}") from None
