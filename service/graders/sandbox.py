"""Running a python grader: its own process (sandbox_child.py) with a scratch folder, no network,
no file system beyond the scratch folder and Python's own installation (read only), CPU-time,
memory and file-size limits, a wall-clock timeout and a cap on what it prints. A grader that
breaks any of these scores 0 with the reason; the API process itself never runs the user's code.

The audit hook is CPython's, which is no security boundary on its own; the process and its
limits are. Where the kernel lets the child enter a network namespace (root, or unprivileged user
namespaces) it has no network at all; the answer's `network` says which held."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHILD = Path(__file__).with_name("sandbox_child.py")


@dataclass(frozen=True)
class Limits:
    wall_s: float = 20.0
    cpu_s: int = 10
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    output_bytes: int = 64 << 10


@dataclass(frozen=True)
class Outcome:
    score: float | None  # None: the grader failed, `error` says how
    error: str | None = None
    kind: str | None = None  # runtime (the grader's fault) or server (ours)
    network: str | None = None


async def run_python(source: str, sample: dict[str, Any], item: dict[str, Any] | None,
                     limits: Limits) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="tunedock-grader-") as scratch:
        job = json.dumps({"source": source, "sample": sample, "item": item or {}, "scratch": scratch,
                          "limits": {"cpu_s": limits.cpu_s, "memory_bytes": limits.memory_bytes,
                                     "file_bytes": limits.file_bytes}}).encode()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-B", str(CHILD), cwd=scratch, env={"PATH": "/usr/bin:/bin"},
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            return Outcome(None, f"the grader sandbox could not start: {exc.strerror}", "server")
        try:
            out = await asyncio.wait_for(_talk(proc, job, limits.output_bytes), limits.wall_s)
        except asyncio.TimeoutError:
            await _reap(proc)
            return Outcome(None, f"the grader ran past its wall-clock limit of {limits.wall_s:g} s", "runtime")
        except _TooMuchOutput:
            await _reap(proc)
            return Outcome(None, f"the grader wrote more than {limits.output_bytes} bytes", "runtime")
        finally:
            _kill(proc)  # a grader's own children cannot outlive it (its session is killed)
        code = await proc.wait()
        line = out.strip().splitlines()[-1] if out.strip() else b""
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            if code == -signal.SIGXCPU:
                return Outcome(None, f"the grader ran past its CPU-time limit of {limits.cpu_s} s", "runtime")
            if code == -signal.SIGKILL:  # the hard CPU limit, one second later, or the kernel's OOM killer
                return Outcome(None, f"the grader was killed: past its CPU-time limit of {limits.cpu_s} s "
                                     "or out of memory", "runtime")
            return Outcome(None, f"the grader's process ended without an answer (exit {code})", "runtime")
        if "score" in answer:
            return Outcome(float(answer["score"]), network=answer.get("network"))
        error = answer.get("error", "the grader failed")
        if answer.get("printed"):
            error += f"; it printed: {answer['printed'][-500:]}"
        return Outcome(None, error, "runtime", answer.get("network"))


class _TooMuchOutput(Exception):
    pass


async def _talk(proc: asyncio.subprocess.Process, job: bytes, cap: int) -> bytes:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(job)
    with contextlib.suppress(ConnectionError):
        await proc.stdin.drain()
    proc.stdin.close()
    out = bytearray()
    while chunk := await proc.stdout.read(65536):
        out += chunk
        if len(out) > cap + 4096:  # the answer line itself is small
            raise _TooMuchOutput
    return bytes(out)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Kill it and read its pipe to the end: asyncio's wait() returns only once the pipe is
    closed, which a paused reader with unread bytes never sees."""
    _kill(proc)
    assert proc.stdout is not None
    while await proc.stdout.read(65536):
        pass
    await proc.wait()


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
