"""GPU assignment without GPUs: a runner configured with a device list gets one slot per device,
and each slot's training child sees only its own device (CUDA_VISIBLE_DEVICES), read back from
the real child processes' environments."""

from __future__ import annotations

import shutil
from pathlib import Path

from service.runner.loop import gpu_slots
from service.runner.process import Child


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


async def test_each_gpu_slot_gets_a_child_that_sees_only_its_device(make_settings) -> None:  # noqa: ANN001
    settings = make_settings(runner_gpus="0, 1,3", warm_child=True)
    slots = gpu_slots(settings)
    assert slots == ["0", "1", "3"]
    children = [await Child.warm_up(settings, gpu) for gpu in slots]
    try:
        seen = [_environ(c.proc.pid).get("CUDA_VISIBLE_DEVICES") for c in children]
    finally:
        for child in children:
            await child.close()
    assert seen == ["0", "1", "3"]
    if shutil.which("nvidia-smi") is None:  # no GPU listed: one CPU slot, no device pinned
        assert gpu_slots(make_settings(runner_gpus=None)) == [None]
