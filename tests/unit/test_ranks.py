"""One job on several devices (issue 34): the plan per rank, the launcher's exit code, and where a
job goes (service/runner/placement.py's choose): how many devices, or wait, or never here."""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from service.contracts import messages as m
from service.contracts.schema import Hyperparameters, LengthStats, Method
from service.jobs.resolve import resolve_auto
from service.runner.placement import NEVER, WAIT, Choice, Device, choose
from service.settings import BaseModelEntry, Settings
from service.shapes import Shape
from service.training.plan import make_plan
from service.training.ranks import exit_code


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2).to_json_file(tmp_path / "config.json")
    return tmp_path


def _shape() -> Shape:
    return Shape(layers=16, hidden=2048, intermediate=8192, heads=32, kv_heads=8, vocab=128256, tied=False)


def test_the_plan_is_per_rank_and_keeps_batch_size_the_examples_per_step() -> None:
    hp = Hyperparameters(batch_size=16, max_seq_length=1024)
    one = make_plan(_shape(), hp, 80 << 30, "unsloth", "cuda")
    two = make_plan(_shape(), hp, 80 << 30, "unsloth", "cuda", ranks=2)
    assert (one.ranks, one.strategy, two.ranks, two.strategy) == (1, "single", 2, "ddp")
    for plan, ranks in ((one, 1), (two, 2)):
        assert plan.micro_batch_size * plan.gradient_accumulation_steps * ranks == 16
    assert two.micro_batch_size <= 8 and "ddp_buckets" in two.breakdown
    # Tight memory: each rank's micro-batch shrinks, accumulation makes up the step.
    tight = make_plan(_shape(), hp, one.estimated_peak_bytes // 2, "unsloth", "cuda", ranks=4)
    assert tight.micro_batch_size * tight.gradient_accumulation_steps * 4 == 16


def test_the_launcher_exits_with_the_first_failure_or_the_clean_end() -> None:
    assert exit_code([0, 0]) == m.EXIT_OK
    assert exit_code([m.EXIT_STOPPED, m.EXIT_STOPPED]) == m.EXIT_STOPPED
    assert exit_code([0, m.EXIT_STOPPED]) == m.EXIT_STOPPED
    # Rank 1 ran out of memory; rank 0 was killed because of it: the OOM explains the attempt.
    assert exit_code([m.EXIT_OOM, -signal.SIGKILL]) == m.EXIT_OOM
    # A rank killed from outside: a crash the runner retries.
    assert exit_code([-signal.SIGKILL, -signal.SIGKILL]) == m.EXIT_FAILED
    assert exit_code([m.EXIT_STOPPED, m.EXIT_BAD_INPUT]) == m.EXIT_BAD_INPUT
    # The runner's stop reached a rank before it could catch it: a stop, not a crash.
    assert exit_code([-signal.SIGTERM, -signal.SIGKILL]) == -signal.SIGTERM


def _job(gpus: object, attempt: int = 0, batch: int = 12, n_train: int = 1000, epochs: int = 2) -> SimpleNamespace:
    return SimpleNamespace(
        id=f"j{gpus}{attempt}", base_model="m", gpus=gpus, attempt=attempt,
        hyperparameters=Hyperparameters(batch_size=batch, n_epochs=epochs, max_seq_length=64),
        dataset=SimpleNamespace(n_train=n_train, lengths=LengthStats(mean=100, p50=100, p95=120, max=128),
                                tokens_estimated=False),
        method=Method())


def _devices(model_dir: Path, n: int, **kw: object) -> list[Device]:
    settings = Settings(base_models=(BaseModelEntry(alias="m", source=str(model_dir)),), **kw)
    return [Device(settings, None, index=i, cpu_devices=n) for i in range(n)]


def test_a_job_takes_its_devices_all_at_once_or_waits(model_dir: Path) -> None:
    devices = _devices(model_dir, 3)
    budgets = {i: None for i in range(3)}
    got = choose(_job(2), devices[1], devices, budgets)
    assert isinstance(got, Choice) and got.devices == [devices[1], devices[0]] and got.plan.ranks == 2
    assert got.reason == "gpus 2 as asked"
    devices[0].hold("other", None, None)
    # Two of three are empty: a 3-device job waits (its turn holds the queue); 4 never fits here.
    assert choose(_job(3), devices[1], devices, {1: None, 2: None}) == WAIT
    assert choose(_job(4), devices[1], devices, {1: None, 2: None}) == NEVER
    # A lane whose own device is busy does not start a gang.
    assert choose(_job(2), devices[0], devices, {0: None, 1: None, 2: None}) == WAIT
    # A device a job on several holds is joined by nothing.
    devices[0].release("other")
    devices[0].hold("gang", None, None, exclusive=True)
    assert choose(_job(1), devices[0], devices, {0: None}) == WAIT


def test_a_resumed_job_goes_on_with_the_devices_that_are_free(model_dir: Path) -> None:
    devices = _devices(model_dir, 3)
    devices[2].hold("other", None, None)
    got = choose(_job(3, attempt=1), devices[0], devices, {0: None, 1: None})
    assert isinstance(got, Choice) and got.ranks == 2 and "resumed on the 2 free" in got.reason
    # On a runner with one device a resumed 2-device job runs as one rank.
    alone = _devices(model_dir, 1)
    got = choose(_job(2, attempt=1), alone[0], alone, {0: None})
    assert isinstance(got, Choice) and got.ranks == 1
    assert choose(_job(2, attempt=0), alone[0], alone, {0: None}) == NEVER


def test_a_job_whose_failed_attempt_still_holds_a_device_waits_for_it(model_dir: Path) -> None:
    # A killed rank fails the attempt; the job is queued again while rank 0's device is still
    # held (its process being stopped). Taking it then resumed it on the one free device (CI run
    # of 1a9dada..eb27208, test_ranks.py): it waits until the attempt has let both go.
    devices = _devices(model_dir, 2)
    job = _job(2, attempt=1)
    devices[0].hold(job.id, None, None, exclusive=True)
    assert choose(job, devices[1], devices, {1: None}) == WAIT
    devices[0].release(job.id)
    got = choose(job, devices[1], devices, {0: None, 1: None})
    assert isinstance(got, Choice) and got.ranks == 2
    # A one-device job too: never beside its own attempt that is still ending.
    single = _job(1, attempt=1)
    devices[0].hold(single.id, None, None)
    assert choose(single, devices[0], devices, {0: None}) == WAIT


def test_auto_takes_several_devices_only_for_a_large_job(model_dir: Path) -> None:
    devices = _devices(model_dir, 3, runner_auto_gpus_min_tokens=100_000)
    budgets = {i: None for i in range(3)}
    small = choose(_job("auto", n_train=100), devices[0], devices, budgets)
    assert isinstance(small, Choice) and small.ranks == 1 and "under the 100,000" in small.reason
    large = choose(_job("auto", n_train=1000), devices[0], devices, budgets)  # 200,000 tokens
    assert isinstance(large, Choice) and large.ranks == 3 and "3 of 3 free" in large.reason
    # Only counts that share the batch equally: 3 free devices, batch 8 -> 2.
    assert choose(_job("auto", batch=8), devices[0], devices, budgets).ranks == 2
    # Never more than a tenant may hold: it would wait for good.
    capped = _devices(model_dir, 3, runner_auto_gpus_min_tokens=100_000, tenant_max_gpus=2)
    assert choose(_job("auto", n_train=1000), capped[0], capped, budgets).ranks == 2


def test_auto_batch_size_is_shared_equally_by_the_gpus_asked() -> None:
    hp = Hyperparameters(batch_size="auto", micro_batch_size=3)
    assert resolve_auto(hp, 4000, gpus=2).batch_size % 6 == 0
    assert resolve_auto(Hyperparameters(batch_size="auto"), 4000, gpus=3).batch_size % 3 == 0


def test_a_copy_that_does_not_fit_each_gpu_says_sharding_is_not_built() -> None:
    from service.training.plan import PlanError

    with pytest.raises(PlanError, match="each of the 2 GPUs holds a whole copy.*FSDP, is not built"):
        make_plan(_shape(), Hyperparameters(batch_size=8), 1 << 30, "unsloth", "cuda", ranks=2)
