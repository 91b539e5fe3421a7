"""vLLM's command line: its GPU share lowered to what is free when it (re)starts beside training."""

from __future__ import annotations

from service.settings import BaseModelEntry, Settings
from serving.vllm import GiB, command, memory_fraction


def _settings(**kw: object) -> Settings:
    return Settings(base_models=(BaseModelEntry(alias="base", source="/models/base"),), serve_model="base", **kw)


def _flag(cmd: list[str]) -> str | None:
    return cmd[cmd.index("--gpu-memory-utilization") + 1] if "--gpu-memory-utilization" in cmd else None


def test_the_configured_share_when_the_gpu_has_it_free() -> None:
    settings = _settings(vllm_memory_fraction=0.4)
    assert memory_fraction(settings, (70 * GiB, 80 * GiB)) == 0.4
    assert _flag(command(settings, (70 * GiB, 80 * GiB))) == "0.4"
    # no reading (the CPU, or nvidia-smi missing): as configured, and nothing when nothing is
    assert _flag(command(settings)) == "0.4"
    assert _flag(command(_settings())) is None
    # vLLM's own default (0.9) fits an idle GPU: left to vLLM
    assert _flag(command(_settings(), (79 * GiB, 80 * GiB))) is None


def test_what_training_leaves_when_less_is_free_than_the_share() -> None:
    # a job holds 50 GiB of 80: a share of 0.4 (32 GiB) is not free, and vLLM would refuse to start
    assert memory_fraction(_settings(vllm_memory_fraction=0.4), (30 * GiB, 80 * GiB)) == 0.362  # (30 - 1) / 80
    # with a fixed KV cache vLLM still checks its share (0.9 unless set) against the free memory
    cmd = command(_settings(vllm_kv_cache_gib=8.0), (40 * GiB, 80 * GiB))
    assert _flag(cmd) == "0.487" and "--kv-cache-memory-bytes" in cmd
    assert memory_fraction(_settings(), (0, 80 * GiB)) == 0.0
