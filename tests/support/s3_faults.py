"""A loopback proxy in front of the real S3 server (moto) that counts every S3 call and fails the
ones it is told to: from call k on, the next `burst` calls get a 503 (a burst longer than
botocore's retries turns one operation into a real failure). Every process of the service (API,
runner, training child) points its S3 endpoint here, so the count covers one whole job."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

_HOP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}


class Faults:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.fail_from: int | None = None
        self.burst = 0
        self.failed: list[str] = []
        self.status, self.code = 503, "ServiceUnavailable"
        self.cuts: list[int] = []  # the next GETs' bodies end after this many bytes, one each

    def reset(self, fail_from: int | None = None, burst: int = 0, status: int = 503,
              code: str = "ServiceUnavailable") -> None:
        """From call `fail_from` on, `burst` calls answer `status` with S3 error `code` (503
        ServiceUnavailable by default; 403 AccessDenied is a permanent refusal)."""
        with self.lock:
            self.calls, self.fail_from, self.burst, self.failed = 0, fail_from, burst, []
            self.status, self.code = status, code

    def cut_gets(self, *after: int) -> None:
        """The next len(after) GETs send their whole Content-Length but only `after[i]` bytes of
        the body, then drop the connection: an object store failing mid-stream."""
        with self.lock:
            self.cuts = list(after)

    def next_cut(self) -> int | None:
        with self.lock:
            return self.cuts.pop(0) if self.cuts else None

    def next_fails(self, what: str) -> bool:
        with self.lock:
            self.calls += 1
            k = self.calls
            fails = self.fail_from is not None and self.fail_from <= k < self.fail_from + self.burst
            if fails:
                self.failed.append(f"#{k} {what}")
            return fails


@contextmanager
def s3_fault_proxy(upstream: str) -> Iterator[tuple[str, Faults]]:
    faults = Faults()
    client = httpx.Client(base_url=upstream, timeout=60)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if faults.next_fails(f"{self.command} {self.path.split('?')[0]}"):
                payload = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{faults.code}</Code>"
                           "<Message>injected fault</Message></Error>").encode()
                self.send_response(faults.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            answer = client.request(self.command, self.path, content=body, headers=headers)
            self.send_response(answer.status_code)
            for k, v in answer.headers.items():
                if k.lower() not in _HOP and k.lower() != "content-encoding":
                    self.send_header(k, v)
            if self.command == "HEAD":
                self.send_header("Content-Length", answer.headers.get("content-length", "0"))
                self.end_headers()
                return
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            cut = self.next_cut_for_get()
            if cut is not None and cut < len(answer.content):
                self.wfile.write(answer.content[:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(answer.content)

        def next_cut_for_get(self) -> int | None:
            return faults.next_cut() if self.command == "GET" and "/" in self.path.strip("/") else None

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a client that went away (a killed child's keep-alive connection) is expected

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", faults
    finally:
        server.shutdown()
        client.close()
