"""A padding-free (packed) micro-batch trains exactly what its examples would alone: the same
loss and gradients within 1e-4, and no example's logits depend on another's tokens."""

from __future__ import annotations

import pytest
import torch

from service.datasets.render import IGNORE, Collator, FlatCollator

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).to(torch.float64).eval()


def examples() -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for n, prompt in ((9, 4), (5, 2), (13, 6), (3, 1)):
        ids = torch.randint(3, 97, (n,), generator=gen).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:]})
    return out


def loss_and_grads(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_packed_equals_each_example_alone(model: torch.nn.Module) -> None:
    rows = examples()
    packed = FlatCollator()(rows)
    assert packed["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows))
    loss, grads = loss_and_grads(model, packed)

    # The reference: each example on its own, weighted by its supervised tokens, as one mean.
    model.zero_grad()
    targets = [sum(1 for t in r["labels"][1:] if t != IGNORE) for r in rows]
    total = torch.zeros((), dtype=torch.float64)
    for r, n in zip(rows, targets, strict=True):
        alone = model(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]]))
        total = total + alone.loss * n / sum(targets)
    total.backward()
    torch.testing.assert_close(loss, total.detach(), atol=1e-4, rtol=0, check_dtype=False)
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, atol=1e-4, rtol=0)

    # And the padded micro-batch (packing off) trains the same thing.
    padded_loss, padded_grads = loss_and_grads(model, Collator(pad_id=0)(rows))
    torch.testing.assert_close(loss, padded_loss, atol=1e-4, rtol=0)
    for g, h in zip(grads, padded_grads, strict=True):
        torch.testing.assert_close(g, h, atol=1e-4, rtol=0)


def test_no_example_sees_another(model: torch.nn.Module) -> None:
    rows = examples()
    with torch.no_grad():
        logits = model(**{k: v for k, v in FlatCollator()(rows).items() if k != "labels"}).logits[0]
        start = 0
        for r in rows:
            n = len(r["input_ids"])
            alone = model(input_ids=torch.tensor([r["input_ids"]])).logits[0]
            torch.testing.assert_close(logits[start:start + n], alone, atol=1e-6, rtol=0)
            start += n
        # Changing the first example changes nothing in the others.
        rows[0]["input_ids"] = [5] * len(rows[0]["input_ids"])
        changed = model(**{k: v for k, v in FlatCollator()(rows).items() if k != "labels"}).logits[0]
    n0 = len(rows[0]["input_ids"])
    torch.testing.assert_close(changed[n0:], logits[n0:], atol=1e-6, rtol=0)
