"""The two drivers of tunedock/_ops.py's I/O-free generators: `_Sync` (httpx.Client, time.sleep)
and `_Async` (httpx.AsyncClient, asyncio.sleep), and the progress bar both feed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from tunedock import _base as b
from tunedock import _ops as ops
from tunedock.types import Export


class _Bar:
    """A tqdm bar: over a job's training steps (described by status, epoch, loss), an export's
    stages, or a download's bytes; ETA from tqdm."""

    def __init__(self, enabled: bool, unit: str = "step") -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            scale = unit == "B"
            self.bar = tqdm(total=None, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000,
                            dynamic_ncols=True)

    def show(self, job: Any) -> None:
        if self.bar is None:
            return
        if isinstance(job, ops.Downloaded):
            self.bar.total = job.total
            self.bar.n = job.done
            self.bar.refresh()
            return
        if isinstance(job, Export):
            self.bar.set_description_str(f"{job.format} {job.status}"
                                         + (f" ({job.stage})" if job.stage else ""), refresh=True)
            return
        p = job.progress
        if p is not None and p.total_steps:
            self.bar.total = p.total_steps
            self.bar.n = p.step
        self.bar.set_description_str(b.progress_text(job), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Sync:
    """Runs ops with blocking I/O."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def iterate(self, op: ops.Op, bar: _Bar | None = None) -> Iterator[Any]:
        """Drive `op`, yielding what it emits; the op's return value is this generator's."""
        stream: Any = None
        step, value = op.send, None
        try:
            while True:
                try:
                    todo = step(value)
                except StopIteration as done:
                    return done.value
                step, value = op.send, None
                try:
                    match todo:
                        case ops.Emit(item):
                            yield item
                        case ops.Send(method, path, kwargs):
                            value = self.http.request(method, path, **kwargs)
                        case ops.Sleep(seconds):
                            time.sleep(seconds)
                        case ops.Progress(job):
                            if bar is not None:
                                bar.show(job)
                        case ops.Open(path, kwargs):
                            if stream is not None:
                                stream.close()
                            request = self.http.build_request("GET", path, timeout=None, **kwargs)
                            stream = self.http.send(request, stream=True)
                            stream.lines = stream.iter_lines()
                            stream.chunks = stream.iter_bytes()
                            if stream.status_code >= 400:
                                stream.read()
                            value = stream
                        case ops.NextLine():
                            value = next(stream.lines, None)
                        case ops.NextChunk():
                            value = next(stream.chunks, None)
                except httpx.TransportError as exc:  # the op decides: retry, or raise its own error
                    step, value = op.throw, exc
        finally:
            if stream is not None:
                stream.close()
            op.close()

    def run(self, op: ops.Op, bar: _Bar | None = None) -> Any:
        it = self.iterate(op, bar)
        while True:
            try:
                next(it)
            except StopIteration as done:
                return done.value


class _Async:
    """Runs ops with asyncio I/O."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def iterate(self, op: ops.Op, bar: _Bar | None = None,
                      returned: list[Any] | None = None) -> AsyncIterator[Any]:
        """Drive `op`, yielding what it emits; its return value is appended to `returned`."""
        stream: Any = None
        step, value = op.send, None
        try:
            while True:
                try:
                    todo = step(value)
                except StopIteration as done:
                    if returned is not None:
                        returned.append(done.value)
                    return
                step, value = op.send, None
                try:
                    match todo:
                        case ops.Emit(item):
                            yield item
                        case ops.Send(method, path, kwargs):
                            value = await self.http.request(method, path, **kwargs)
                        case ops.Sleep(seconds):
                            await asyncio.sleep(seconds)
                        case ops.Progress(job):
                            if bar is not None:
                                bar.show(job)
                        case ops.Open(path, kwargs):
                            if stream is not None:
                                await stream.aclose()
                            request = self.http.build_request("GET", path, timeout=None, **kwargs)
                            stream = await self.http.send(request, stream=True)
                            stream.lines = stream.aiter_lines()
                            stream.chunks = stream.aiter_bytes()
                            if stream.status_code >= 400:
                                await stream.aread()
                            value = stream
                        case ops.NextLine():
                            value = await anext(stream.lines, None)
                        case ops.NextChunk():
                            value = await anext(stream.chunks, None)
                except httpx.TransportError as exc:
                    step, value = op.throw, exc
        finally:
            if stream is not None:
                await stream.aclose()
            op.close()

    async def run(self, op: ops.Op, bar: _Bar | None = None) -> Any:
        returned: list[Any] = []
        async for _ in self.iterate(op, bar, returned):
            pass
        return returned[0]
