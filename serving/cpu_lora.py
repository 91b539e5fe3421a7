"""Faster LoRA ops for vLLM's CPU backend, installed by the `tunedock_cpu_lora_ops` vLLM plugin
(an entry point in pyproject.toml; `register()` below).

vLLM's CPU LoRA ops (`vllm.lora.ops.torch_ops`) gather one weight matrix per token
(`weights[indices]`, tokens x out x rank) and multiply with an einsum: during a prefill of a few
hundred tokens that copies megabytes per layer, and a batch holding one LoRA request ran at ~0.2x
of the base model's throughput (bench/RESULTS.md). A batch holds only a handful of adapters, so
the same product is one matmul per distinct adapter. Results are the same as vLLM's ops (tested in
tests/unit/test_cpu_lora.py) except for tokens without an adapter (index -1): vLLM's CPU ops index
the last adapter slot with it, so a base-model request batched with adapter requests could pick up
that adapter; here they get no LoRA delta, as vLLM's CUDA kernels do. Slicing, add/assign and
dtypes are kept.
"""

from __future__ import annotations

import torch


def lora_matmul(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor | int,
                dtype: torch.dtype) -> torch.Tensor:
    """Row t of the result is inputs[t] @ weights[indices[t]].T (`indices` an int: the same adapter
    for every row), one matmul per adapter in use."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    x = inputs.to(dtype)
    # A handful of values: a Python set is cheaper than torch.unique on a small batch.
    used = {indices} if isinstance(indices, int) else set(indices.tolist())
    if len(used) == 1:
        (idx,) = used
        if idx < 0:  # no adapter
            return x.new_zeros(x.shape[0], weights.shape[1])
        return x @ weights[idx].to(dtype).T
    out = torch.zeros(x.shape[0], weights.shape[1], dtype=dtype, device=x.device)
    for idx in used:
        if idx < 0:
            continue
        rows = (indices == idx).nonzero(as_tuple=True)[0]
        out[rows] = x[rows] @ weights[idx].to(dtype).T
    return out


def token_indices(lora_indices_tensor: torch.Tensor, seq_len_tensor: torch.Tensor) -> torch.Tensor | int:
    """The sgmv ops' per-sequence adapters as per-token ones; an int when one adapter serves all."""
    per_seq = set(lora_indices_tensor.tolist())
    if len(per_seq) == 1:
        return per_seq.pop()
    return torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)


def sgmv_shrink(inputs, lora_a_weights, output_tensor, b_seq_start_loc, seq_len_tensor,  # noqa: ANN001, ANN201, PLR0913
                lora_indices_tensor, batches, max_seq_length, token_nums, scaling):
    bgmv_shrink(inputs, lora_a_weights, output_tensor,
                token_indices(lora_indices_tensor, seq_len_tensor), scaling)


def sgmv_expand(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor,  # noqa: ANN001, ANN201, PLR0913
                lora_indices_tensor, batches, max_seq_length, token_nums, add_inputs=False):
    bgmv_expand(inputs, lora_b_weights, output_tensor,
                token_indices(lora_indices_tensor, seq_len_tensor), add_inputs)


def sgmv_expand_slice(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor,  # noqa: ANN001, ANN201, PLR0913
                      lora_indices_tensor, batches, max_seq_length, token_nums, slice_offset,
                      slice_size, add_inputs=False):
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor,
                      token_indices(lora_indices_tensor, seq_len_tensor), slice_offset,
                      slice_size, add_inputs)


def bgmv_shrink(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor | int, scaling: float = 1.0) -> None:
    outputs = lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs[:]


def bgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor | int, add_inputs: bool = True) -> None:
    outputs = lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common_len = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common_len] += outputs[:limit, :common_len]
    else:
        output_tensor[:, :common_len] = outputs[:limit, :common_len]


def bgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor,
                      output_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor | int,
                      slice_offset: int, slice_size: int, add_inputs: bool = True) -> None:
    outputs = lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset: slice_offset + slice_size] += outputs[:]
    else:
        output_tensor[:, slice_offset: slice_offset + slice_size] = outputs[:]


def register() -> None:
    """The `vllm.general_plugins` entry point: on the CPU backend only."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        install()


def install() -> None:
    """Swap vLLM's per-token-gather ops for these, where vLLM looks them up."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    # PunicaWrapperCPU imported all six by name; anything else finds them in lora_ops.
    ours = {name: globals()[name] for name in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice",
                                                "sgmv_shrink", "sgmv_expand", "sgmv_expand_slice")}
    for module in (lora_ops, punica_cpu):
        for name, fn in ours.items():
            setattr(module, name, fn)
