"""The code every StaffTracker HTTP service shares: JSON over HTTP, and a server that
listens on $HOST:$PORT and stops cleanly on SIGTERM.

This package is a runtime dependency (`deps`) of every HTTP service, so it is part of
their closures and travels with them. The programs do not import it across store paths
(a program only knows its own package, RECONCILER_PACKAGE): each carries a copy of the
block between the markers below, and tests/test_example_repo.py checks the copies match.
Python 3.9+, standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any

__all__ = ["JsonHandler", "get_json", "http_server"]


# --- stafftracker-common --------------------------------------------------------------
class JsonHandler(BaseHTTPRequestHandler):
    """A request handler with JSON helpers; subclasses define do_GET / do_POST."""

    server_version = "stafftracker/1.0"

    def send_body(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        body = (json.dumps(value, indent=2) + "\n").encode()
        self.send_body(status, body, "application/json", headers)

    def read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"null")

    def log_message(self, format: str, *args: Any) -> None:
        service = os.environ.get("RECONCILER_SERVICE", "stafftracker")
        sys.stderr.write(f"{service}: {self.address_string()} {format % args}\n")


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class _Server(ThreadingHTTPServer):
    """Binds without HTTPServer's reverse DNS lookup of its own address, which can stall
    for seconds between bind and listen where no DNS server answers."""

    def server_bind(self) -> None:
        TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


def http_server(handler: type[BaseHTTPRequestHandler]) -> None:
    """Serve `handler` on $HOST:$PORT until SIGTERM (or SIGINT), then return."""
    address = (os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"]))
    server = _Server(address, handler)
    server.daemon_threads = True

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


# --- end stafftracker-common ----------------------------------------------------------
