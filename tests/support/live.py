"""The real app served by uvicorn on a loopback port, for tests that need a real socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn

from service.app import create_app
from service.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def live_app(settings: Settings, tenants: tuple[str, ...] = ("acme", "globex")
                   ) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """Yield (base_url, {tenant: key}) while the app serves on 127.0.0.1."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    keys = {t: await app.state.store.create_api_key(t) for t in tenants}
    try:
        yield f"http://127.0.0.1:{port}", keys
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
