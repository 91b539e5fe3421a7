"""Our CPU LoRA ops give vLLM's results (one matmul per adapter instead of a per-token gather)."""

from __future__ import annotations

import pytest
import torch

from serving import cpu_lora

lora_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")

CASES = [
    (240, [0]),            # a prefill of one adapter
    (240, [0, 1, 2, 3]),   # a prefill mixing four
    (8, [2]),              # decode, one adapter
    (8, [0, 1, 2, 3]),     # decode, four (takes the gather path)
    (64, [-1, 1]),         # -1: a base-model request batched with an adapter's
    (8, [-1]),
]


def tensors(tokens: int, used: list[int], four_d: bool) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(tokens + len(used))
    a = torch.randn(4, 16, 96, generator=gen, dtype=torch.bfloat16)
    b = torch.randn(4, 160, 16, generator=gen, dtype=torch.bfloat16)
    if four_d:
        a, b = a.unsqueeze(1), b.unsqueeze(1)
    x = torch.randn(tokens, 96, generator=gen, dtype=torch.bfloat16)
    idx = torch.tensor([used[i % len(used)] for i in range(tokens)])
    return a, b, x, idx


@pytest.mark.parametrize("four_d", [False, True])
@pytest.mark.parametrize(("tokens", "used"), CASES)
def test_ops_match_vllm(tokens: int, used: list[int], four_d: bool) -> None:
    a, b, x, idx = tensors(tokens, used, four_d)
    theirs, ours = torch.zeros(tokens, 16), torch.zeros(tokens, 16)
    no_lora = idx < 0
    lora_ops.bgmv_shrink(x, a, theirs, idx, 0.5)
    cpu_lora.bgmv_shrink(x, a, ours, idx, 0.5)
    # vLLM's CPU ops read -1 as the last adapter slot; ours give such rows no delta (as on CUDA).
    theirs[no_lora] = 0
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)
    assert ours.abs().sum() > 0 or no_lora.all()

    base = torch.randn(tokens, 320, dtype=torch.bfloat16)
    for add in (True, False):
        untouched = base if add else torch.zeros_like(base)
        # expand_slice writes columns 160:320 here, expand the first 160 (b's output width)
        for op, args, cols in (("bgmv_expand_slice", (160, 160, add), slice(160, 320)),
                               ("bgmv_expand", (add,), slice(0, 160))):
            t_out, o_out = base.clone(), base.clone()
            getattr(lora_ops, op)(ours, b, t_out, idx, *args)
            getattr(cpu_lora, op)(ours, b, o_out, idx, *args)
            t_out[no_lora, cols] = untouched[no_lora, cols]
            torch.testing.assert_close(o_out, t_out, rtol=2e-2, atol=2e-2)


def test_install_routes_vllms_prefill_ops_through_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.lora.punica_wrapper import punica_cpu

    for module in (lora_ops, punica_cpu):
        for name in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice", "sgmv_shrink",
                     "sgmv_expand", "sgmv_expand_slice"):
            monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    a, _, x, _ = tensors(240, [1, 3], False)
    starts, lens, seq_idx = torch.tensor([0, 100]), torch.tensor([100, 140]), torch.tensor([1, 3])
    original_bgmv_shrink = lora_ops.bgmv_shrink

    def original_sgmv_shrink(x, a, out, starts, lens, seqs, *rest):  # noqa: ANN001, ANN202
        original_bgmv_shrink(x, a, out, torch.repeat_interleave(seqs, lens), rest[-1])

    cpu_lora.install()
    assert punica_cpu.sgmv_shrink is cpu_lora.sgmv_shrink
    assert lora_ops.bgmv_expand_slice is cpu_lora.bgmv_expand_slice
    for seqs in (seq_idx, torch.tensor([2, 2])):  # two adapters, then one for both sequences
        expected = torch.zeros(240, 16)
        original_sgmv_shrink(x, a, expected, starts, lens, seqs, 2, 140, 240, 1.0)
        got = torch.zeros(240, 16)
        punica_cpu.sgmv_shrink(x, a, got, starts, lens, seqs, 2, 140, 240, 1.0)
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
