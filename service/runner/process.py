"""The training child as a process: start it (cold, or warm: imported ahead and waiting for a
job on stdin), with its events pipe, GPU, memory cap and log; signal it; stop it."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec

from service.settings import Settings


def send(proc: asyncio.subprocess.Process, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


@dataclass
class Child:
    """A training child process and the read end of its events pipe."""

    proc: asyncio.subprocess.Process
    events_fd: int

    @classmethod
    async def start(cls, settings: Settings, gpu: str | None, args: list[str], log_path: Path,
                    warm: bool = False) -> Child:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, "TUNEDOCK_EVENTS_FD": str(write_fd), "PYTHONUNBUFFERED": "1"}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        limit = settings.training_memory_limit_bytes

        def limit_memory() -> None:  # runs in the child before exec
            if limit:
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "service.training", *args,
                stdin=asyncio.subprocess.PIPE if warm else asyncio.subprocess.DEVNULL,
                stdout=log_file, stderr=log_file, pass_fds=(write_fd,), env=env,
                start_new_session=True, preexec_fn=limit_memory)
        os.close(write_fd)
        return cls(proc, read_fd)

    @classmethod
    async def warm_up(cls, settings: Settings, gpu: str | None) -> Child:
        """A child that imports the training stack now and waits for a job on stdin."""
        log_path = Path(settings.data_dir).resolve() / "runs" / f"warm-{gpu or 'cpu'}.log"
        return await cls.start(settings, gpu, ["--warm"], log_path, warm=True)

    async def hand(self, spec_path: Path, log_path: Path) -> bool:
        """Give a warm child its job; False if it is gone."""
        if self.proc.returncode is not None or self.proc.stdin is None:
            return False
        try:
            self.proc.stdin.write(msgspec.json.encode({"spec": str(spec_path), "log": str(log_path)})
                                  + b"\n")
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            return False
        self.proc.stdin.close()
        return True

    async def close(self) -> None:
        """An unused warm child: closing stdin tells it to exit."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            send(self.proc, signal.SIGKILL)
            await self.proc.wait()
        os.close(self.events_fd)


async def terminate(proc: asyncio.subprocess.Process, grace_seconds: float) -> None:
    """SIGTERM (the child saves nothing more and exits between steps), SIGKILL after the grace."""
    send(proc, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_seconds)
    except TimeoutError:
        send(proc, signal.SIGKILL)
