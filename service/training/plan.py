"""The memory plan: estimate peak GPU memory from the model's config before anything loads, and
pick the largest micro-batch that fits (gradient accumulation makes up the effective batch).

The estimate is a sum of parts, each from the shapes in config.json:
  base weights   4-bit: 0.52 B per linear weight (NF4 + double-quantised absmax); 16-bit: 2 B.
                 Embeddings, lm_head and norms stay 16-bit.
  LoRA           r * (in + out) per targeted linear: fp32 weight, grad and two Adam moments (16 B).
  activations    with gradient checkpointing: the saved layer inputs (Unsloth offloads them to
                 host memory, so only a fraction stays) and one layer's recompute working set;
                 without it, what every layer keeps for its backward.
  logits         the logits/loss buffers (Unsloth's fused cross-entropy never holds fp32 logits).
  overhead       allocator slack and kernel workspaces.
Constants were calibrated against peaks measured on an H100 (bench/RESULTS.md); the ones
without checkpointing on an H200 (bench/activation_memory.py).

The plan also decides gradient checkpointing: it trains without when the estimate without it
fits the free memory with the same margin. That keeps the micro-batch the checkpointed plan
chose and drops the recompute: 1.44x the real tokens/s through POST /jobs for a 1B model at
batch 8 on an H200 (bench/mixed_lengths.py). An out-of-memory retry always checkpoints. The
factors without checkpointing were measured with Unsloth only, so "auto" keeps checkpointing on
the PEFT backend (a GPU without Unsloth), where they were never checked.
"""

from __future__ import annotations

import math

from service.contracts.schema import Hyperparameters, LengthStats, MemoryPlan, Method
from service.shapes import Shape

GiB = 1 << 30
NF4_BYTES = 0.52
LORA_BYTES = 16
MARGIN = 0.10
# Allocator slack and kernel workspaces. Unsloth's comes from runs with its per-block
# torch.compile off, as the service trains; compiled, the peak is ~0.35 GiB higher.
OVERHEAD = {"unsloth": int(0.05 * GiB), "peft": int(0.35 * GiB)}
# Bytes per token of one decoder layer's recompute working set, in units of hidden / intermediate.
LAYER_HIDDEN_FACTOR = 20
LAYER_INTER_FACTOR = 6
# Without checkpointing: bytes per token that each decoder layer keeps for its backward, in
# units of hidden / intermediate, plus a fixed workspace. Fitted on the 1B and 3B shapes
# (14.4, 3.65), which predicted the 8B shape's slope within 0.1%, then rounded up; plan /
# measured 1.00-1.03 on 1B, 3B and 8B at 2k-16k tokens per micro-batch (bench/RESULTS.md).
NOCKPT_HIDDEN_FACTOR = 15
NOCKPT_INTER_FACTOR = 3.75
NOCKPT_WORKSPACE = int(0.25 * GiB)
# Fraction of checkpointed layer inputs that stays on the GPU.
SAVED_INPUTS_ON_GPU = {"unsloth": 0.1, "peft": 1.0}
# Bytes per token per vocab entry for logits, loss and their gradients.
LOGIT_BYTES = {"unsloth": 0.5, "peft": 6.0}
# DPO runs each example's chosen and rejected answers as two rows; the reference pass (adapter
# disabled, no gradients) runs before the policy's and is freed before it. Logits cost what they
# cost in supervised training: on the H100 an Unsloth DPO job peaked at 1.96 GiB where full
# fp32 logits would have added ~2.8 GiB (bench/results/gpu-run-14-methods.log).
DPO_ROWS = 2
# Reinforcement (GRPO): a step samples every completion of its batch_size prompts at once
# (group_size each), holding their KV cache (16-bit keys and values, every layer) while the
# model generates; then it trains on the sequences like supervised rows, in micro-batches of
# sequences. The reference pass (beta > 0, adapter disabled) is freed before the policy's, as
# DPO's. Not yet checked against a measured peak on a GPU.
KV_BYTES = 2
# DDP copies the trainable gradients into communication buckets (torch's default cap: 25 MiB
# each, the first bucket 1 MiB); two buckets in flight bound what LoRA's gradients need there.
DDP_BUCKETS = 2 * 25 * (1 << 20)


# What packing "auto" trains with, from bench/mixed_lengths.py: on the CPU (PEFT) the fastest
# (205 real tokens/s vs 157 padding-free, 131 padded); on the H100 (Unsloth) within noise of
# padded at batch 8 (1.11x, 0.91x, 1.10x over three runs) and 1.91x padded at batch 32, while
# padding-free was 0.57-0.60x padded (a QLoRA step pays its dequantisation per forward, and on
# the CPU SDPA masks the whole flattened row). On an H200 (session 9) batch 8 is CPU-bound and
# length_grouped / padded was 1.29x and 0.74x in two runs; with checkpointing off (session
# 10) 1.15x and 1.13x at batch 8, 2.02x at batch 32. bench/RESULTS.md, "Packing".
AUTO_PACKING = "length_grouped"


class PlanError(RuntimeError):
    pass


def resolve_packing(mode: str) -> str:
    return AUTO_PACKING if mode == "auto" else mode


def row_tokens(lengths: LengthStats | None, max_seq_length: int, packing: str) -> int | None:
    """Tokens per row the plan sizes for: the real lengths, not max_seq_length for every row.
    Padding-free micro-batches hold their examples' tokens (p95 per row: rarely are all rows of
    one micro-batch longer); padded ones are as wide as their longest row, and some micro-batch
    holds the file's longest. None when the lengths are unknown."""
    if lengths is None:
        return None
    return min(max_seq_length, lengths.p95 if packing == "padding_free" else lengths.max)


def estimate(shape: Shape, hp: Hyperparameters, micro_batch: int, backend: str,
             row_tokens: int | None = None, method: str = "supervised",
             checkpointing: bool = True, ranks: int = 1, rollout_sequences: int = 0) -> dict[str, int]:
    """Peak bytes by part (per rank) for one micro-batch of `row_tokens` (default
    max_seq_length) per row; `rollout_sequences`: the sequences a reinforcement step generates
    at once on this rank."""
    dpo = method == "dpo"
    linears = shape.linears()
    lora_params = shape.layers * sum(hp.lora_r * (a + b) for name, (a, b) in linears.items()
                                     if name in hp.target_modules)
    weight_bytes = NF4_BYTES if hp.load_in_4bit else 2
    tokens = micro_batch * (row_tokens or hp.max_seq_length) * (DPO_ROWS if dpo else 1)
    layer = tokens * (LAYER_HIDDEN_FACTOR * shape.hidden + LAYER_INTER_FACTOR * shape.intermediate)
    if checkpointing:
        saved = shape.layers * tokens * shape.hidden * 2 * SAVED_INPUTS_ON_GPU[backend]
    else:  # every layer keeps what its backward reads
        saved = NOCKPT_WORKSPACE
        layer = shape.layers * tokens * (NOCKPT_HIDDEN_FACTOR * shape.hidden
                                         + NOCKPT_INTER_FACTOR * shape.intermediate)
    logits = tokens * shape.vocab * LOGIT_BYTES[backend]
    parts = {
        "base_weights": shape.linear_params * weight_bytes
        + (shape.embedding_params + shape.layers * 2 * shape.hidden) * 2,
        "lora_and_optimizer": lora_params * LORA_BYTES,
        "activations": saved + layer,
        "logits": logits,
        "overhead": OVERHEAD[backend],
    }
    if ranks > 1:
        parts["ddp_buckets"] = min(DDP_BUCKETS, lora_params * 4)
    if rollout_sequences:
        kv_width = shape.hidden * shape.kv_heads // shape.heads
        parts["rollouts_kv_cache"] = (rollout_sequences * (row_tokens or hp.max_seq_length)
                                      * shape.layers * 2 * kv_width * KV_BYTES)
    return {k: int(v) for k, v in parts.items()}


def make_plan(shape: Shape, hp: Hyperparameters, available: int | None, backend: str,
              device: str, max_micro_batch: int | None = None, row_tokens: int | None = None,
              packing: str | None = None, method: Method = Method(), ranks: int = 1) -> MemoryPlan:
    """The largest micro-batch dividing batch_size whose estimate fits `available` with a margin,
    and whether it trains with gradient checkpointing.

    `max_micro_batch` caps it after an out-of-memory retry; the plan still takes the largest
    size under the cap that fits the memory free now, down to 1, before it gives up. The CPU
    (available None) never checkpoints.

    `ranks` > 1: data-parallel (DDP), a whole copy of the model per device, so `available` and
    the estimate are per rank; each rank's micro-batch divides its share of batch_size, and the
    accumulation makes up the rest: batch_size = micro-batch x accumulation x ranks.

    A reinforcement job's micro-batches are of sequences (a prompt and one sampled completion,
    `row_tokens` being the longest prompt plus max_completion_tokens): a step trains batch_size x
    completions-per-prompt of them."""
    rollouts = method.rollouts
    if rollouts > 1:
        assert method.reinforcement is not None
        row_tokens = min(hp.max_seq_length, (row_tokens or hp.max_seq_length)
                         + method.reinforcement.hyperparameters.max_completion_tokens)
    # the API only takes a gpus count that divides the step's sequences
    share = hp.batch_size * rollouts // ranks
    generated = share if rollouts > 1 else 0
    top = min(hp.micro_batch_size or share, share)
    if max_micro_batch is not None:
        top = min(top, max_micro_batch)
    candidates = [d for d in range(top, 0, -1) if share % d == 0] or [1]
    if hp.micro_batch_size and max_micro_batch is None:
        candidates = [min(hp.micro_batch_size, share)]
    if device == "cpu":
        checkpointing = False
    else:  # an OOM retry checkpoints, whatever was asked: the memory it planned on was not there
        checkpointing = hp.gradient_checkpointing != "off" or max_micro_batch is not None

    def fits(parts: dict[str, int]) -> bool:
        return available is None or sum(parts.values()) * (1 + MARGIN) <= available

    best = None
    for mb in candidates:
        parts = estimate(shape, hp, mb, backend, row_tokens, method.type, checkpointing, ranks, generated)
        if fits(parts):
            best = (mb, parts)
            break
    if best is None:
        mb = candidates[-1]
        peak = sum(estimate(shape, hp, mb, backend, row_tokens, method.type, checkpointing, ranks,
                            generated).values())
        raise PlanError(
            f"the job needs about {peak / GiB:.1f} GiB at micro-batch {mb} "
            f"(seq {hp.max_seq_length}, {'4-bit' if hp.load_in_4bit else '16-bit'} base, "
            f"LoRA r={hp.lora_r}{'' if checkpointing else ', gradient checkpointing off'}) but the "
            f"{'GPU' if device != 'cpu' else 'runner'} has {available / GiB:.1f} GiB free for it; lower max_seq_length, use load_in_4bit"
            f"{'' if checkpointing else ', set gradient_checkpointing to auto'}, or use a larger GPU"
            + (f" (each of the {ranks} GPUs holds a whole copy of the model: sharding it across them, "
               "FSDP, is not built yet)" if ranks > 1 else "")
        )
    mb, parts = best
    if checkpointing and hp.gradient_checkpointing == "auto" and max_micro_batch is None \
            and backend == "unsloth":
        kept = estimate(shape, hp, mb, backend, row_tokens, method.type, checkpointing=False,
                        ranks=ranks, rollout_sequences=generated)
        if fits(kept):
            checkpointing, parts = False, kept
    return MemoryPlan(device=device, micro_batch_size=mb,
                      gradient_accumulation_steps=math.ceil(share / mb),
                      ranks=ranks, strategy="ddp" if ranks > 1 else "single",
                      estimated_peak_bytes=sum(parts.values()), available_bytes=available,
                      breakdown=parts, packing=packing, row_tokens=row_tokens or hp.max_seq_length,
                      gradient_checkpointing=checkpointing)
