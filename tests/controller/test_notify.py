"""Notifications against a real HTTP receiver on loopback: what arrives, its signature,
retries while the receiver is down or failing, and that a receiver that stays down
neither blocks the sender nor goes unreported."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reconciler.controller.notify import Event, Notifier, Retry
from reconciler.controller.webhook import verify
from reconciler.errors import UserError
from tests.support import free_port

SECRET = "notify-secret-4f1c"
FAST = Retry(first=0.05, cap=0.2, within=10.0, timeout=2.0)
STALLED = Event(
    "local",
    "Stalled",
    reason="ApplyFailed",
    generation=3,
    commit="0123456789abcdef0123456789abcdef01234567",
    message="api@m1: health check failed",
)


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST; it answers `answers` first
    (one status per request), then 200."""

    def __init__(self, port: int = 0, answers: Sequence[int] = ()) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Condition()
        answers_left = list(answers)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.arrived:
                    receiver.requests.append((dict(self.headers.items()), body))
                    receiver.arrived.notify_all()
                status = answers_left.pop(0) if answers_left else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/moved")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/reconciler"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[dict[str, str], bytes]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.requests) >= count, timeout)
            return list(self.requests)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def receiving(port: int = 0, answers: Sequence[int] = ()) -> Iterator[Receiver]:
    receiver = Receiver(port, answers)
    try:
        yield receiver
    finally:
        receiver.stop()


def test_an_event_arrives_as_json_signed_like_github() -> None:
    with receiving() as receiver:
        notifier = Notifier([receiver.url], SECRET, FAST)
        notifier.send(STALLED)
        [(headers, body)] = receiver.wait_for(1)
        notifier.close()
    event = json.loads(body)
    assert event == {
        "deployment": "local",
        "generation": 3,
        "commit": STALLED.commit,
        "result": "Stalled",
        "reason": "ApplyFailed",
        "message": "api@m1: health check failed",
        "time": STALLED.time.isoformat().replace("+00:00", "Z"),
        "text": "reconciler: local: Stalled (ApplyFailed), generation 3, commit 0123456789ab: "
        "api@m1: health check failed",
    }
    assert headers["Content-Type"] == "application/json"
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Hub-Signature-256"], expected)
    assert verify(headers, body, SECRET) == "github"  # what our own /hooks/git would accept
    assert verify(headers, body, "another secret") is None


def test_without_a_secret_nothing_is_signed() -> None:
    with receiving() as receiver:
        notifier = Notifier([receiver.url], None, FAST)
        notifier.send(Event("local", "Ready", reason="AllActive", generation=4))
        [(headers, body)] = receiver.wait_for(1)
        notifier.close()
    assert "X-Hub-Signature-256" not in headers
    assert json.loads(body)["text"] == "reconciler: local: Ready (AllActive), generation 4"


def test_a_receiver_down_at_first_gets_the_event_when_it_comes_up() -> None:
    port = free_port()
    lines: list[str] = []
    notifier = Notifier(
        [f"http://127.0.0.1:{port}/hooks/reconciler"], SECRET, FAST, log=lines.append
    )
    notifier.send(STALLED)
    time.sleep(0.5)  # several refused tries
    with receiving(port) as receiver:
        requests = receiver.wait_for(1)
        notifier.close()
    assert [json.loads(body)["result"] for _, body in requests] == ["Stalled"]
    assert lines == []


def test_a_failing_receiver_gets_the_same_delivery_again_in_order() -> None:
    with receiving(answers=[503, 500]) as receiver:
        notifier = Notifier([receiver.url], SECRET, FAST)
        notifier.send(STALLED)
        notifier.send(Event("local", "Ready", reason="AllActive", generation=4))
        requests = receiver.wait_for(4)
        notifier.close()
    results = [json.loads(body)["result"] for _, body in requests]
    deliveries = [headers["X-Reconciler-Delivery"] for headers, _ in requests]
    assert results == ["Stalled", "Stalled", "Stalled", "Ready"]
    assert len(set(deliveries[:3])) == 1 and deliveries[3] != deliveries[0]


def test_a_receiver_that_stays_down_blocks_nothing_and_is_reported(
    capfd: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    down = f"http://user:pw@127.0.0.1:{port}/services/T000/B000/token-in-path"
    with receiving() as receiver:
        notifier = Notifier([down, receiver.url], SECRET, Retry(first=0.05, cap=0.1, within=0.6))
        started = time.monotonic()
        for generation in range(20):
            notifier.send(Event("local", "failed", reason="ApplyFailed", generation=generation))
        sending = time.monotonic() - started
        # The receiver that is up is not held back by the one that is down.
        assert len(receiver.wait_for(20, timeout=2.0)) == 20
        time.sleep(1.5)  # past the bound of every event
        closing = time.monotonic()
        notifier.close()
        closing = time.monotonic() - closing
    assert sending < 0.1
    assert closing < 0.5
    stderr = capfd.readouterr().err
    gave_up = [line for line in stderr.splitlines() if "notify: gave up on" in line]
    assert [line.split("reconciler: ")[1] for line in gave_up] == [
        f"local: failed (ApplyFailed), generation {n}" for n in range(20)
    ], stderr
    assert all(f"gave up on http://127.0.0.1:{port}/… (" in line for line in gave_up)
    assert "token-in-path" not in stderr and "pw" not in stderr and SECRET not in stderr


@pytest.mark.parametrize(("status", "answer"), [(400, "400 Bad Request"), (302, "302 Found")])
def test_a_refused_event_is_reported_and_not_retried(status: int, answer: str) -> None:
    lines: list[str] = []
    with receiving(answers=[status]) as receiver:
        notifier = Notifier([receiver.url], SECRET, FAST, log=lines.append)
        notifier.send(STALLED)
        receiver.wait_for(1)
        time.sleep(0.5)  # longer than a few backoffs
        notifier.close()
        assert len(receiver.requests) == 1
    assert len(lines) == 1
    assert f"gave up on {receiver.url.rsplit('/', 2)[0]}/… (answered {answer})" in lines[0]


def test_what_is_still_queued_at_shutdown_is_reported() -> None:
    lines: list[str] = []
    url = f"http://127.0.0.1:{free_port()}/hooks/reconciler"
    notifier = Notifier([url], SECRET, Retry(first=0.05, cap=0.1, within=60.0), log=lines.append)
    notifier.send(STALLED)
    notifier.send(Event("local", "Ready", reason="AllActive", generation=4))
    started = time.monotonic()
    notifier.close(grace=0.3)
    assert time.monotonic() - started < 1.5
    assert len(lines) == 2
    assert all("the controller is stopping" in line for line in lines)


def test_a_full_queue_drops_its_oldest_waiting_event_and_says_so() -> None:
    lines: list[str] = []
    url = f"http://127.0.0.1:{free_port()}/hooks/reconciler"
    notifier = Notifier([url], None, Retry(first=5.0, within=60.0), limit=2, log=lines.append)
    for generation in range(3):
        notifier.send(Event("local", "failed", generation=generation))
    shown = url.rsplit("/", 2)[0] + "/…"
    assert lines == [
        f"notify: gave up on {shown} (more than 2 events are waiting): "
        "reconciler: local: failed, generation 1"
    ]
    notifier.close(grace=0)
    assert [line.rsplit(" ", 1)[1] for line in lines[1:]] == ["0", "2"]  # reported once each


def test_the_event_loop_is_not_held_up_by_a_receiver_that_hangs() -> None:
    """A receiver that accepts the connection and never answers: the loop keeps ticking,
    and aclose() returns after its grace, reporting the event."""
    lines: list[str] = []

    async def controller(url: str) -> tuple[float, float]:
        notifier = Notifier([url], SECRET, FAST, log=lines.append)
        started = time.monotonic()
        notifier.send(STALLED)
        for _ in range(10):
            await asyncio.sleep(0.01)
        ticking = time.monotonic() - started
        started = time.monotonic()
        await notifier.aclose(grace=0.2)
        return ticking, time.monotonic() - started

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen()
        ticking, closing = asyncio.run(controller(f"http://127.0.0.1:{hung.getsockname()[1]}/"))
    assert ticking < 0.5 and closing < 1.5
    assert len(lines) == 1 and "the controller is stopping" in lines[0]


def test_aclose_waits_for_what_is_queued() -> None:
    async def controller(url: str) -> None:
        notifier = Notifier([url], SECRET, FAST)
        notifier.send(STALLED)
        await notifier.aclose()

    with receiving() as receiver:
        asyncio.run(controller(receiver.url))
        assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.test/x", "not an http:// or https:// URL"),
        ("hooks.example.test/x", "not an http:// or https:// URL"),
        ("http://", "not an http:// or https:// URL"),
        ("https://example.test:443x/secret", "the port is not a number"),
    ],
)
def test_a_url_that_cannot_be_posted_to_is_refused(url: str, problem: str) -> None:
    with pytest.raises(UserError, match=problem) as refused:
        Notifier([url])
    assert "secret" not in str(refused.value)
