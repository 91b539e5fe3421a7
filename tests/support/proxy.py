"""A loopback HTTP proxy in front of the real server that can fail on purpose: answer 503, or
forward a request and then drop the connection before the client sees the answer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


@contextmanager
def faulty_proxy(upstream: str, faults: list[str]) -> Iterator[tuple[str, list[str]]]:
    """faults: one per request in order ('503', 'drop', then anything else forwards).
    Yields (proxy_url, log of 'METHOD path -> action')."""
    log: list[str] = []
    lock = threading.Lock()
    client = httpx.Client(base_url=upstream, timeout=30)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _handle(self) -> None:
            with lock:
                action = faults.pop(0) if faults else "forward"
                log.append(f"{self.command} {self.path} -> {action}")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if action == "503":
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            upstream_response = client.request(self.command, self.path, content=body, headers=headers)
            if action == "drop":
                # The server did the work; the client never hears about it.
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.send_response(upstream_response.status_code)
            for k, v in upstream_response.headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(upstream_response.content)))
            self.end_headers()
            self.wfile.write(upstream_response.content)

        do_GET = do_POST = do_DELETE = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        client.close()
