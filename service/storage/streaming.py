"""An object written while its bytes arrive: the event loop hands chunks to a bounded queue and a
worker thread uploads them (S3: a multipart upload, part by part; the local store: a temporary
file renamed at the end). So an upload holds at most the queue's few chunks plus the store's own
part buffers in memory, never the whole body, and nothing is spooled to the API's disk."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio

from service.storage import ObjectStore

_EOF, _ABORT = b"", object()
# A client that sends nothing for this long has gone: the upload is dropped, so the worker
# thread never waits for good on a request that will not finish.
IDLE_SECONDS = 600.0


class UploadAborted(Exception):
    """The request ended before its file did (bad form, too large, client gone): the store drops
    what it had (s3transfer aborts the multipart upload; the local store removes its temp file)."""


class _QueueReader:
    """The file-like end the store's upload reads from, in the worker thread."""

    def __init__(self, queue: asyncio.Queue[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.queue, self.loop = queue, loop
        self.buffer = bytearray()
        self.done = False

    def _next(self) -> Any:
        waiting = asyncio.run_coroutine_threadsafe(self.queue.get(), self.loop)
        try:
            return waiting.result(timeout=IDLE_SECONDS)
        except TimeoutError:
            waiting.cancel()
            raise UploadAborted(f"no bytes came for {IDLE_SECONDS:g} s") from None

    def read(self, n: int = -1) -> bytes:
        while not self.done and (n < 0 or len(self.buffer) < n):
            chunk = self._next()
            if chunk is _ABORT:
                raise UploadAborted("the upload was abandoned")
            if chunk == _EOF:
                self.done = True
                break
            self.buffer.extend(chunk)
        size = len(self.buffer) if n < 0 else min(n, len(self.buffer))
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out


class StreamingUpload:
    """`await write(chunk)` as bytes arrive, then `await finish()`, or `await abort()`."""

    QUEUE_CHUNKS = 8  # chunks of up to 1 MiB (what the request stream hands over)

    def __init__(self, objects: ObjectStore, bucket: str, key: str) -> None:
        self.bucket, self.key = bucket, key
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=self.QUEUE_CHUNKS)
        reader = _QueueReader(self.queue, asyncio.get_running_loop())
        self.worker = asyncio.create_task(
            anyio.to_thread.run_sync(objects.put_fileobj, bucket, key, reader))

    async def _put(self, item: Any) -> None:
        """Queue `item`, unless the worker has stopped (then its error is raised here)."""
        put = asyncio.ensure_future(self.queue.put(item))
        await asyncio.wait({put, self.worker}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            await self.worker  # raises the store's error
            raise UploadAborted("the object store stopped reading the upload")

    async def write(self, chunk: bytes) -> None:
        if chunk:
            await self._put(chunk)

    async def finish(self) -> None:
        await self._put(_EOF)
        await self.worker

    async def abort(self) -> None:
        if self.worker.done():
            return
        try:
            await self._put(_ABORT)
            await self.worker
        except Exception:  # noqa: BLE001 - UploadAborted, or the store's own error: either way gone
            pass
