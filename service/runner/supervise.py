"""The one loop that watches a child process the runner started, for training and exports alike:
read and record its messages, heartbeat its lease, stop it when the runner stops, the lease is
lost, a message cannot be recorded, or (training) the user asks for a pause; then wait for it to
exit. What the child did is recorded by the caller's `record`; how it ended comes back as an
Outcome, and the caller's policy decides what happens next."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from service.contracts import messages as m
from service.errors import LeaseLost
from service.runner.process import Child, messages, send, terminate
from service.settings import Settings


@dataclass
class Outcome:
    code: int | None = None  # the exit status (-N: signal N)
    lost: bool = False  # the lease went to another attempt (cancelled, or fenced out)
    pausing: bool = False  # a pause was asked for: the child was told to save and stop
    unrecorded: bool = False  # a message could not be recorded, so the child was stopped


async def supervise(
    child: Child, settings: Settings, log: Any, stopping: asyncio.Event, *,
    heartbeat: Callable[[], Awaitable[bool]],
    record: Callable[[m.ChildMessage], Awaitable[None]],
    on_runner_stop: Literal["ask", "terminate"],
    pause_requested: Callable[[], Awaitable[bool]] | None = None,
) -> Outcome:
    """Watch `child` until it exits.

    heartbeat:       renew the lease; False once it is someone else's.
    record:          write one message; LeaseLost when fenced out, any other error is a failure
                     to record. Either stops the child, and the pipe is still read to its end, so
                     a child that keeps writing never blocks on a full pipe.
    on_runner_stop:  "ask": SIGTERM once and let it finish its step and upload (training);
                     "terminate": SIGTERM, SIGKILL after the grace (exports start over anyway).
    pause_requested: asked after each heartbeat; True: SIGTERM once, the child saves and stops.
    """
    out = Outcome()
    proc = child.proc
    reader = asyncio.create_task(_read(child, settings, log, record, out))
    watcher = asyncio.create_task(_watch(proc, settings, log, stopping, heartbeat, on_runner_stop,
                                         pause_requested, out))
    try:
        out.code = await proc.wait()
        await reader
    finally:
        watcher.cancel()
        reader.cancel()
        if proc.returncode is None:
            send(proc, signal.SIGKILL)
    return out


async def _watch(proc: asyncio.subprocess.Process, settings: Settings, log: Any, stopping: asyncio.Event,
                 heartbeat: Callable[[], Awaitable[bool]], on_runner_stop: str,
                 pause_requested: Callable[[], Awaitable[bool]] | None, out: Outcome) -> None:
    stop_sent = False
    while proc.returncode is None:
        try:
            await asyncio.wait_for(stopping.wait(), settings.heartbeat_seconds)
        except TimeoutError:
            pass
        if stopping.is_set() and not stop_sent:
            if on_runner_stop == "terminate":
                await terminate(proc, settings.cancel_grace_seconds)
                return
            # Graceful: the child finishes any checkpoint upload, stops at the next step.
            send(proc, signal.SIGTERM)
            stop_sent = True
        try:
            ours = await heartbeat()
        except Exception:  # noqa: BLE001 - a database blip; the lease has slack
            log.warning("heartbeat failed", exc_info=True)
            continue
        if not ours:
            out.lost = True
            await terminate(proc, settings.cancel_grace_seconds)
            return
        if not stop_sent and pause_requested is not None and await pause_requested():
            # The child saves a resume point at the next step boundary, then exits.
            send(proc, signal.SIGTERM)
            out.pausing = stop_sent = True


async def _read(child: Child, settings: Settings, log: Any,
                record: Callable[[m.ChildMessage], Awaitable[None]], out: Outcome) -> None:
    stopping: asyncio.Task | None = None
    async for msg in messages(child.events_fd, log):
        if stopping is not None:
            continue
        try:
            await record(msg)
            continue
        except LeaseLost:
            # Fenced: the work went to another attempt while this runner could not heartbeat
            # (frozen, partitioned). Nothing more of this child is recorded.
            log.warning("lease lost; stopping the child")
            out.lost = True
        except Exception:  # noqa: BLE001 - a database blip, a bug: the work must not hang
            log.exception("a message of the child could not be recorded; stopping the child",
                          message=type(msg).__name__)
            out.unrecorded = True
        stopping = asyncio.create_task(terminate(child.proc, settings.cancel_grace_seconds))
    if stopping is not None:
        await stopping
