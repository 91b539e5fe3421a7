"""The CPU slot's fork server: warm children forked from one process that imported the training
stack, each reported back (pid, exit status) and each dying with the template."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from service.contracts import messages as m
from service.runner.process import Template
from tests.support.processes import alive


async def ready(events_fd: int) -> m.ChildMessage:
    loop = asyncio.get_running_loop()
    line = await asyncio.wait_for(loop.run_in_executor(None, os.fdopen(events_fd, "rb", 0).readline), 60)
    return m.decode(line)


async def test_forked_warm_children_train_report_their_exit_and_die_with_the_template(
        make_settings, tmp_path: Path) -> None:  # noqa: ANN001
    settings = make_settings()
    started = time.monotonic()
    template = await Template.start(settings)
    try:
        first = await template.fork(settings, tmp_path / "warm-1.log")
        imported = time.monotonic() - started
        assert first is not None
        began = time.monotonic()
        second = await template.fork(settings, tmp_path / "warm-2.log")
        forked = time.monotonic() - began
        assert second is not None and second.proc.pid != first.proc.pid
        print(f"\ntemplate: first warm child after {imported:.1f} s (imports), next in {forked * 1000:.0f} ms")
        assert isinstance(await ready(os.dup(first.events_fd)), m.Ready)

        # A job it cannot read: the child says why and exits 2, as a started child does.
        spec = tmp_path / "spec.json"
        spec.write_text("{not json")
        assert await first.hand(spec, tmp_path / "job.log")
        assert await asyncio.wait_for(first.proc.wait(), 60) == m.EXIT_BAD_INPUT
        said = (await ready(first.events_fd))
        assert isinstance(said, m.Failed) and said.code == "invalid_spec"

        # A runner killed with -9 takes its template along, and the template its children.
        os.kill(template.proc.pid, signal.SIGKILL)
        assert await asyncio.wait_for(second.proc.wait(), 30) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while alive(second.proc.pid):
            assert time.monotonic() < deadline, "the forked child outlived its template"
            await asyncio.sleep(0.1)
        assert await template.fork(settings, tmp_path / "warm-3.log") is None
    finally:
        await template.close()

