"""A real HTTP receiver on loopback for webhook tests: it records every POST (headers and body),
answers a chosen status, and can go down and come back up on the same port."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.live import free_port


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self._server: ThreadingHTTPServer | None = None

    def up(self) -> Receiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                owner.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(owner.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, predicate, timeout: float = 20) -> list[tuple[dict[str, str], bytes]]:  # noqa: ANN001
        """The deliveries received so far, once `predicate(them)` holds."""
        deadline = time.monotonic() + timeout
        while not predicate(list(self.received)):
            assert time.monotonic() < deadline, f"the receiver did not get what was expected: {self.received}"
            time.sleep(0.05)
        return list(self.received)
