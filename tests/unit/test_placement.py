"""Placement of several jobs on one device (service/runner/placement.py): the budget a job may
plan with beside others, what a running job holds, and the plan the runner makes for a job (the
child's own, made within the same budget). The CPU device with a pool: no GPU reading involved."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from service.contracts.schema import Hyperparameters, Method
from service.runner.placement import Device
from service.settings import BaseModelEntry, Settings
from service.training.plan import MARGIN

MiB = 1 << 20


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                num_attention_heads=9, num_key_value_heads=3).to_json_file(tmp_path / "config.json")
    return tmp_path


def _settings(model_dir: Path, **kw: object) -> Settings:
    return Settings(base_models=(BaseModelEntry(alias="m", source=str(model_dir)),), **kw)


def _job(batch: int = 8, micro: int | None = None, seq: int = 512) -> SimpleNamespace:
    hp = Hyperparameters(batch_size=batch, micro_batch_size=micro, max_seq_length=seq)
    return SimpleNamespace(base_model="m", hyperparameters=hp, dataset=None,
                           method=Method())


def test_a_job_holds_its_plan_and_the_next_one_plans_with_what_is_left(model_dir: Path) -> None:
    alone = Device(_settings(model_dir), None).plan(_job(micro=8), None)
    assert alone is not None
    held = int(alone.estimated_peak_bytes * (1 + MARGIN))
    pool = 3 * held // MiB + 100
    device = Device(_settings(model_dir, runner_device_memory_mb=pool, runner_memory_reserve_mb=100,
                              runner_jobs_per_gpu=4), None)
    assert asyncio.run(device.budget()) == (pool - 100) * MiB
    first = device.plan(_job(micro=8), asyncio.run(device.budget()))
    assert first is not None and first.estimated_peak_bytes == alone.estimated_peak_bytes
    device.hold("a", first, asyncio.run(device.budget()))
    assert device.held["a"].bytes == held
    assert asyncio.run(device.budget()) == (pool - 100) * MiB - held
    # Its own claim does not count against a job re-planning (an out-of-memory retry).
    assert asyncio.run(device.budget(exclude="a")) == (pool - 100) * MiB
    device.hold("b", device.plan(_job(micro=8), asyncio.run(device.budget())), None)
    # A third fixed-size job does not fit what two leave; with its micro-batch free, its plan
    # takes a smaller one that does: it plans knowing it shares the device.
    left = asyncio.run(device.budget())
    assert left < held
    assert device.plan(_job(micro=8), left) is None
    smaller = device.plan(_job(), left)
    assert smaller is not None and smaller.micro_batch_size < 8
    assert smaller.estimated_peak_bytes * (1 + MARGIN) <= left
    assert device.neighbours("a") == ["b"]
    device.release("b")
    assert asyncio.run(device.budget()) == (pool - 100) * MiB - held


def test_the_childs_plan_replaces_what_the_runner_guessed(model_dir: Path) -> None:
    device = Device(_settings(model_dir, runner_device_memory_mb=64_000), None)
    budget = asyncio.run(device.budget())
    device.hold("a", None, budget)  # no plan yet (a retry): the whole budget is held
    assert device.held["a"].bytes == budget and asyncio.run(device.budget()) == 0
    plan = device.plan(_job(micro=2), budget)
    assert plan is not None
    device.planned("a", plan)
    assert device.held["a"].bytes == int(plan.estimated_peak_bytes * (1 + MARGIN))


def test_lanes_and_threads(model_dir: Path) -> None:
    import os

    assert Device(_settings(model_dir), None).lanes == 1  # the CPU trains one job unless told
    assert Device(_settings(model_dir), "0").lanes == 4
    shared = Device(_settings(model_dir, runner_jobs_per_gpu=2), None)
    assert shared.cpu_threads == max(1, (os.cpu_count() or 1) // 2)
    assert Device(_settings(model_dir, runner_jobs_per_gpu=2), "0").cpu_threads is None
    # Nothing bounds a CPU without a pool: jobs plan as they would alone.
    assert asyncio.run(Device(_settings(model_dir), None).budget()) is None
    # A model that cannot be sized here has no plan (it only starts on an empty device).
    assert Device(_settings(model_dir), None).plan(SimpleNamespace(**{**vars(_job()), "base_model": "x"}),
                                                   None) is None


def test_one_nvidia_smi_reading_gives_every_gpus_budget(model_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """All GPUs from one reading (a claim reads every empty device's budget, for a job on
    several): free memory per GPU, and what each running job's process uses there."""
    from service.runner.placement import gpu_memory

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text('#!/bin/sh\ncase "$1" in\n'
                   '  --query-gpu=*) printf "0, GPU-a, 40000\\n1, GPU-b, 70000\\n" ;;\n'
                   '  --query-compute-apps=*) printf "4242, GPU-a, 2000\\n77, GPU-b, 100\\n" ;;\nesac\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    readings = gpu_memory()
    assert readings == {"0": (40000 * MiB, {4242: 2000 * MiB}), "1": (70000 * MiB, {77: 100 * MiB})}
    gpu0 = Device(_settings(model_dir, runner_memory_reserve_mb=1000), "0")
    gpu0.hold("a", None, None)
    gpu0.held["a"].bytes, gpu0.held["a"].pid = 5000 * MiB, 4242
    # 40,000 free - 1,000 reserve - (5,000 the job's plan takes - 2,000 its process has already)
    assert asyncio.run(gpu0.budget(readings=readings)) == 36000 * MiB
    assert asyncio.run(Device(_settings(model_dir), "7").budget(readings=readings)) is None
