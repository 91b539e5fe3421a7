"""The documented rule for "auto" n_epochs and batch_size (README: Hyperparameters)."""

from __future__ import annotations

import pytest

from service.contracts.schema import Hyperparameters
from service.jobs.resolve import resolve_auto


@pytest.mark.parametrize(("n_train", "epochs", "batch"), [
    (10, 10, 1),          # 10 x 3 < 100 examples seen: 100 // 10 epochs
    (3, 25, 1),           # capped at 25 epochs
    (200, 3, 1),          # 0.2% of 200 = 0.4 -> 1
    (5_000, 3, 8),        # 10 -> the nearest power of two
    (20_000, 1, 32),      # 60k > 25k examples seen: 25k // 20k = 1 epoch; 40 -> 32
    (1_000_000, 1, 256),  # batch capped at 256
])
def test_rule(n_train: int, epochs: int, batch: int) -> None:
    hp = resolve_auto(Hyperparameters(n_epochs="auto", batch_size="auto"), n_train)
    assert (hp.n_epochs, hp.batch_size) == (epochs, batch)


def test_explicit_values_are_kept() -> None:
    hp = Hyperparameters(n_epochs=2, batch_size=4)
    assert resolve_auto(hp, 50_000) is hp


def test_an_auto_batch_is_a_multiple_of_the_micro_batch_asked_for() -> None:
    hp = resolve_auto(Hyperparameters(batch_size="auto", micro_batch_size=3), 4000)  # 8 alone
    assert hp.batch_size == 9
