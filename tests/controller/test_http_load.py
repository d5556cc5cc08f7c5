"""The HTTP side under load, against a real server process: probes stay fast while many
clients connect at once or hold webhook requests open, unauthenticated webhook bodies
are refused before they are read, and what slow clients may make the server hold is
bounded (its resident memory, read from /proc)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.controller.http import HOOK_READERS, HOOK_TIMEOUT, IDLE_TIMEOUT, MAX_HOOK_BODY

pytestmark = pytest.mark.slow

# A controller's HTTP side with a view that knows nothing, in a process of its own.
SERVER = """
import asyncio, sys
from reconciler.controller.http import HttpServer, HttpSettings
from reconciler.controller.metrics import Metrics

class Empty:
    def deployments(self): return []
    def deployment(self, name): return None
    def history(self, name): return None
    def instance_log(self, deployment, key): return None
    def ready(self): return True, "ok"
    def poke(self, urls): return 0

async def main():
    settings = HttpSettings("127.0.0.1:0", webhook_secret="hook-secret")
    server = HttpServer(Empty(), settings, Metrics())
    await server.start()
    print(server.address[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop()

asyncio.run(main())
"""

SLOW_CLIENTS = 40
SENT = 4 * 1024 * 1024  # of each slow client's 5 MiB body, before it stalls
PROBES = 200
FAST = 1.0  # seconds: a dropped SYN is retried after 1 s, so any drop fails this


class Server:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc, self.port = proc, port

    def rss(self) -> int:
        """Resident memory in bytes."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kb = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(kb) * 1024


@pytest.fixture
def server() -> Iterator[Server]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        yield Server(proc, int(proc.stdout.readline()))
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def probe(port: int) -> float:
    """Seconds from connecting to a complete `/healthz` answer."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: reconciler\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    assert answer.split(b" ")[1] == b"200", answer[:100]
    return time.monotonic() - start


async def probes(port: int) -> list[float]:
    return list(await asyncio.gather(*(probe(port) for _ in range(PROBES))))


def hook_head(signature: str | None) -> bytes:
    lines = ["POST /hooks/git HTTP/1.1", "Host: reconciler", f"Content-Length: {MAX_HOOK_BODY}"]
    if signature is not None:
        lines.append(f"X-Hub-Signature-256: {signature}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def status_line(reader: asyncio.StreamReader, within: float) -> bytes:
    return await asyncio.wait_for(reader.readline(), within)


def test_many_probes_at_once_are_all_answered_fast(server: Server) -> None:
    waits = asyncio.run(probes(server.port))
    assert max(waits) < FAST, f"slowest of {PROBES}: {max(waits):.2f} s"


def test_an_unsigned_webhook_is_refused_before_its_body_is_sent(server: Server) -> None:
    async def scenario() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(hook_head(None))  # and never the body
        try:
            return await status_line(reader, 5)
        finally:
            writer.close()

    assert asyncio.run(scenario()).split(b" ")[1] == b"401"


def test_slow_webhook_clients_hold_little_memory_and_never_slow_the_probes(
    server: Server,
) -> None:
    """Signed (as far as the headers tell), 4 of 5 MiB sent, then nothing: the server
    reads HOOK_READERS of them and answers those 408 after HOOK_TIMEOUT, tells the rest
    at once to retry later (503), and meanwhile probes are as fast as ever."""
    before = server.rss()

    async def scenario() -> tuple[int, list[float], list[bytes]]:
        clients = []
        for _ in range(SLOW_CLIENTS):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(hook_head("sha256=" + "0" * 64) + b"x" * SENT)
            clients.append((reader, writer))
        held = 0
        for _ in range(20):  # 2 s to read whatever the server is willing to read
            await asyncio.sleep(0.1)
            held = max(held, server.rss())
        waits = await probes(server.port)
        answers = await asyncio.gather(*(status_line(r, HOOK_TIMEOUT + 5) for r, _ in clients))
        for _, writer in clients:
            writer.transport.abort()
        return held, waits, answers

    held, waits, answers = asyncio.run(scenario())
    grown = (held - before) / 2**20
    bound = HOOK_READERS * MAX_HOOK_BODY / 2**20 + 10  # what is read, and some buffers
    assert grown < bound, f"{SLOW_CLIENTS} slow clients grew the server by {grown:.0f} MiB"
    assert max(waits) < FAST, f"slowest probe: {max(waits):.2f} s"
    statuses = sorted(a.split(b" ")[1].decode() for a in answers)
    assert statuses == ["408"] * HOOK_READERS + ["503"] * (SLOW_CLIENTS - HOOK_READERS)


def test_a_client_that_never_finishes_its_headers_is_let_go(server: Server) -> None:
    async def scenario() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: reconciler\r\n")  # no blank line
        start = time.monotonic()
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reader.read(), IDLE_TIMEOUT + 10)
        writer.close()
        return time.monotonic() - start

    assert asyncio.run(scenario()) < IDLE_TIMEOUT + 3
