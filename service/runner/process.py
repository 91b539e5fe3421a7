"""The training child as a process: start it (cold, or warm: imported ahead and waiting for a
job on stdin), with its events pipe, GPU, memory cap and log; signal it; stop it. On a CPU slot
a warm child is forked from the slot's Template (service/training/template.py) instead of
importing the training stack again."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import structlog

from service.contracts import messages as m
from service.settings import Settings

log = structlog.get_logger()


def send(proc: asyncio.subprocess.Process | Forked, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # a forked child that has not called setsid yet
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


class _PipeWriter:
    """The write end of a forked child's job pipe, with the few methods Child uses of asyncio's
    StreamWriter (the one line written is far below a pipe's buffer, so a write never blocks)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    async def drain(self) -> None:
        return None

    def is_closing(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Forked:
    """A child forked by a Template, as the runner sees it: what asyncio's Process gives (pid,
    returncode, wait, stdin); its exit status is reported by the template, which reaps it."""

    def __init__(self, pid: int, job_fd: int, exited: asyncio.Future[int]) -> None:
        self.pid = pid
        self.stdin = _PipeWriter(job_fd)
        self._exited = exited

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


class Template:
    """A CPU slot's fork server: `python -m service.training --template`, which imported the
    training stack once and forks a warm child on request."""

    def __init__(self, proc: asyncio.subprocess.Process, sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        self.exits: dict[int, asyncio.Future[int]] = {}
        self.forked: asyncio.Queue[int | None] = asyncio.Queue()
        self._settled = asyncio.Event()  # set once it has imported, or is gone
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, settings: Settings) -> Template:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log_path = Path(settings.data_dir).resolve() / "runs" / "template-cpu.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TUNEDOCK_TEMPLATE_FD": str(theirs.fileno()), "PYTHONUNBUFFERED": "1"}
        with open(log_path, "ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "service.training", "--template",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log_file,
                pass_fds=(theirs.fileno(),), env=env, start_new_session=True)
        theirs.close()
        return cls(proc, ours)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        decoder = msgspec.json.Decoder(m.TemplateMessage)
        loop = asyncio.get_running_loop()
        try:
            while line := await self.proc.stdout.readline():
                try:
                    message = decoder.decode(line)
                except msgspec.DecodeError:
                    log.warning("unreadable line from the fork server", line=line[:200])
                    continue
                match message:
                    case m.Imported():
                        self._settled.set()
                    case m.Forked(pid=pid):
                        self.forked.put_nowait(pid)
                    case m.Exited(pid=pid, code=code):
                        exited = self.exits.setdefault(pid, loop.create_future())
                        if not exited.done():
                            exited.set_result(code)
        finally:
            # The template is gone, and its children with it (they die with their parent).
            for exited in self.exits.values():
                if not exited.done():
                    exited.set_result(-signal.SIGKILL)
            self.forked.put_nowait(None)
            self._settled.set()

    async def settled(self, stopping: asyncio.Event) -> bool:
        """Wait until the template has imported (or is gone, and forks fall back to starting a
        child); False if the runner began stopping first."""
        stop = asyncio.create_task(stopping.wait())
        ready = asyncio.create_task(self._settled.wait())
        await asyncio.wait({stop, ready}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        ready.cancel()
        return self._settled.is_set() and not stopping.is_set()

    async def fork(self, settings: Settings, log_path: Path) -> Child | None:
        """A warm child forked from the template; None if the template is gone."""
        if self.reader.done():
            return None
        job_read, job_write = os.pipe()
        events_read, events_write = os.pipe()
        request = m.ForkRequest(log=str(log_path), memory_limit_bytes=settings.training_memory_limit_bytes)
        try:
            socket.send_fds(self.sock, [msgspec.json.encode(request)], [job_read, events_write])
            pid = await asyncio.wait_for(self.forked.get(), 300)  # its first import, on a busy host
        except (OSError, TimeoutError):
            # A template that does not answer is of no more use: without it, children start.
            log.warning("the fork server did not answer; training children will be started")
            send(self.proc, signal.SIGKILL)
            pid = None
        finally:
            os.close(job_read)
            os.close(events_write)
        if pid is None:
            os.close(job_write)
            os.close(events_read)
            return None
        exited = self.exits.setdefault(pid, asyncio.get_running_loop().create_future())
        return Child(Forked(pid, job_write, exited), events_read)

    async def close(self) -> None:
        """Closing the socket tells the template to exit; its children go with it."""
        self.sock.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            send(self.proc, signal.SIGKILL)
            await self.proc.wait()
        self.reader.cancel()


@dataclass
class Child:
    """A training child process and the read end of its events pipe."""

    proc: asyncio.subprocess.Process | Forked
    events_fd: int

    @classmethod
    async def start(cls, settings: Settings, gpu: str | None, args: list[str], log_path: Path,
                    warm: bool = False, module: str = "service.training") -> Child:
        """`python -m <module> <args>`: the training child, or the export child (service.exports)."""
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
                sys.executable, "-m", module, *args,
                stdin=asyncio.subprocess.PIPE if warm else asyncio.subprocess.DEVNULL,
                stdout=log_file, stderr=log_file, pass_fds=(write_fd,), env=env,
                start_new_session=True, preexec_fn=limit_memory)
        os.close(write_fd)
        return cls(proc, read_fd)

    @classmethod
    async def warm_up(cls, settings: Settings, gpu: str | None, template: Template | None = None) -> Child:
        """A child that has imported the training stack (forked from the slot's template, if it
        has one, else started to import it now) and waits for a job on stdin."""
        log_path = Path(settings.data_dir).resolve() / "runs" / f"warm-{gpu or 'cpu'}.log"
        if template is not None and (child := await template.fork(settings, log_path)) is not None:
            return child
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


async def messages(fd: int, log: Any) -> AsyncIterator[m.ChildMessage]:
    """The messages a child writes on its events pipe (read end `fd`), until it closes; a line
    that is not a message is logged and skipped."""
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader(limit=1 << 20, loop=loop)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(fd, "rb", 0))
    try:
        while line := await stream.readline():
            try:
                yield m.decode(line)
            except msgspec.DecodeError:
                log.warning("unreadable message from the child", line=line[:200])
    finally:
        transport.close()


async def terminate(proc: asyncio.subprocess.Process, grace_seconds: float) -> None:
    """SIGTERM (the child saves nothing more and exits between steps), SIGKILL after the grace."""
    send(proc, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_seconds)
    except TimeoutError:
        send(proc, signal.SIGKILL)
