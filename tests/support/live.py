"""The real app served by uvicorn on a loopback port (in a thread), for tests that need a socket:
the SDK, the CLI and streamed uploads."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from service.app import create_app
from service.db.engine import Database
from service.jobs.store import Store
from service.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(settings: Settings, tenants: tuple[str, ...] = ("acme", "globex")
          ) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield (base_url, {tenant: key}) while the app serves on 127.0.0.1."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)

    async def make_keys() -> dict[str, str]:
        db = Database(settings.database_url)
        try:
            return {t: await Store(db).create_api_key(t) for t in tenants}
        finally:
            await db.close()

    keys = asyncio.run(make_keys())
    try:
        yield f"http://127.0.0.1:{port}", keys
    finally:
        server.should_exit = True
        thread.join(10)
