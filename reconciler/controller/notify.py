"""Notifications (SPEC §12): `reconciler run --notify URL` (repeatable) POSTs a JSON event
to every URL on each `Ready`/`Stalled` transition and each failed or failed-over attempt.

    notifier = Notifier(urls, secret=read_secret(path, "--notify-secret-file"))
    notifier.send(Event("local", "Stalled", reason="ApplyFailed", generation=3,
                        commit=sha, message="api@m1: health check failed"))
    await notifier.aclose()          # on shutdown (or `close()` outside a loop)

The body is `Event.payload()`: deployment, generation, commit, result, reason, message,
time (ISO 8601, UTC) and a Slack-compatible `text`. With a secret it is signed like
GitHub's webhooks: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
`X-Reconciler-Delivery` stays the same across retries of one event, so a receiver can
drop a repeat.

`send` never blocks: it appends to a queue per URL, and a thread per URL delivers in
order, retrying a receiver that is down, times out or answers 408, 429 or 5xx with
exponential backoff (±10 % jitter; by default 2 s doubling up to 60 s, each POST timing
out after 10 s) until `Retry.within` seconds (default 10 min) after the event was sent.
An event that cannot be delivered within that bound, one refused with another status
(3xx included: a POST is not followed), the oldest waiting one when more than `limit`
(default 1000) wait for one URL, and those still queued when the controller stops are
each reported on stderr (the URL's scheme and host only: a Slack URL's path is its
secret), naming the event.

Why threads and urllib: no HTTP client is among our dependencies, a POST every few
minutes needs none, and a thread per receiver cannot hold up the controller's event loop,
its executor, or the other receivers, whatever one receiver does.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO
from urllib.parse import urlsplit

from reconciler import __version__
from reconciler.errors import UserError

RETRYABLE_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
JITTER = 0.1


@dataclass(frozen=True)
class Event:
    deployment: str
    result: str  # what happened: Ready, NotReady, Stalled, Recovered, failed, failed-over…
    reason: str | None = None  # a condition reason, e.g. ApplyFailed
    generation: int | None = None
    commit: str | None = None
    message: str = ""
    time: datetime = field(default_factory=lambda: datetime.now(UTC))

    def text(self) -> str:
        """One line for Slack, Mattermost or a chat bridge."""
        words = f"reconciler: {self.deployment}: {self.result}"
        if self.reason:
            words += f" ({self.reason})"
        if self.generation is not None:
            words += f", generation {self.generation}"
        if self.commit:
            words += f", commit {self.commit[:12]}"
        return f"{words}: {self.message}" if self.message else words

    def payload(self) -> dict[str, object]:
        return {
            "deployment": self.deployment,
            "generation": self.generation,
            "commit": self.commit,
            "result": self.result,
            "reason": self.reason,
            "message": self.message,
            "time": self.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "text": self.text(),
        }


@dataclass(frozen=True)
class Retry:
    first: float = 2.0  # seconds before the first retry, doubled each time
    cap: float = 60.0  # longest wait between two tries
    within: float = 600.0  # give up on an event this long after `send`
    timeout: float = 10.0  # one POST


def signature(secret: str, body: bytes) -> str:
    """GitHub's `X-Hub-Signature-256` value of a body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff(retry: Retry, tries: int) -> float:
    """The wait after `tries` failed tries, with jitter so receivers are not hit in step."""
    base = min(retry.cap, retry.first * 2.0 ** (tries - 1))
    return base * random.uniform(1 - JITTER, 1 + JITTER)


def shown(url: str) -> str:
    """A URL as the log may show it: scheme and host, never credentials or the path."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--notify {shown(url)}: not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 (parsing it is the check)
    except ValueError:
        raise UserError(f"--notify {shown(url)}: the port is not a number") from None
    return url


def stderr_line(text: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"{stamp} {text}", file=sys.stderr, flush=True)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect of a POST as a GET without the body."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class _Refused(Exception):
    """The receiver answered with a status a retry will not change."""


@dataclass(frozen=True)
class _Delivery:
    event: Event
    body: bytes
    id: str
    deadline: float  # time.monotonic() after which no retry is started


class _Receiver:
    """One URL: a queue of deliveries and the thread that works through it in order."""

    def __init__(
        self,
        url: str,
        secret: str | None,
        retry: Retry,
        limit: int,
        log: Callable[[str], None],
    ) -> None:
        self.url, self.secret, self.retry, self.limit, self.log = url, secret, retry, limit, log
        self.queue: deque[_Delivery] = deque()
        self.changed = threading.Condition()
        self.closing = False
        self.stopped = threading.Event()  # wakes a backoff wait at shutdown
        self.thread = threading.Thread(target=self._work, name=f"notify {shown(url)}", daemon=True)
        self.thread.start()

    def put(self, delivery: _Delivery) -> None:
        with self.changed:
            if self.closing:
                self._lost(delivery, "the controller is stopping")
                return
            if len(self.queue) >= self.limit:
                # The oldest waiting event: the head may be in flight.
                self._lost(self.queue[1], f"more than {self.limit} events are waiting")
                del self.queue[1]
            self.queue.append(delivery)
            self.changed.notify()

    def finish(self) -> None:
        """Deliver what is queued, then end the thread."""
        with self.changed:
            self.closing = True
            self.changed.notify()

    def stop(self, grace: float) -> None:
        """Wait up to `grace` seconds for finish(), then stop and report what is left."""
        self.thread.join(grace)
        self.stopped.set()
        self.thread.join(0.5)
        with self.changed:
            for delivery in self.queue:
                self._lost(delivery, "the controller is stopping")
            self.queue.clear()

    def _work(self) -> None:
        while True:
            with self.changed:
                while not self.queue and not self.closing:
                    self.changed.wait()
                if not self.queue:
                    return
                delivery = self.queue[0]
            if not self._deliver(delivery):
                return  # stopped: close() reports it with what is still queued
            with self.changed:
                if self.queue and self.queue[0] is delivery:
                    self.queue.popleft()

    def _deliver(self, delivery: _Delivery) -> bool:
        """Try until delivered, refused or past the bound; False when stopped first."""
        if time.monotonic() > delivery.deadline:
            self._lost(delivery, f"not tried within {self.retry.within:g}s, behind earlier events")
            return True
        tries = 0
        while True:
            tries += 1
            try:
                self._post(delivery)
                return True
            except _Refused as e:
                self._lost(delivery, str(e))
                return True
            except (OSError, http.client.HTTPException) as e:  # down, timed out, 5xx…
                problem = _describe(e)
            wait = backoff(self.retry, tries)
            if time.monotonic() + wait > delivery.deadline:  # no retry would start in time
                within = self.retry.within
                self._lost(delivery, f"{tries} tries within {within:g}s; last: {problem}")
                return True
            if self.stopped.wait(wait):
                return False

    def _post(self, delivery: _Delivery) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"reconciler/{__version__}",
            "X-Reconciler-Delivery": delivery.id,
        }
        if self.secret:
            headers["X-Hub-Signature-256"] = signature(self.secret, delivery.body)
        request = urllib.request.Request(self.url, delivery.body, headers, method="POST")
        try:
            with _OPENER.open(request, timeout=self.retry.timeout) as response:
                response.read()
        except urllib.error.HTTPError as e:
            e.close()
            if e.code not in RETRYABLE_STATUS:
                raise _Refused(f"answered {e.code} {e.reason}") from None
            raise

    def _lost(self, delivery: _Delivery, why: str) -> None:
        self.log(f"notify: gave up on {shown(self.url)} ({why}): {delivery.event.text()}")


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"answered {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__


class Notifier:
    """Sends events to every URL, never blocking the caller; see the module docstring."""

    def __init__(
        self,
        urls: Sequence[str],
        secret: str | None = None,
        retry: Retry | None = None,
        *,
        limit: int = 1000,
        log: Callable[[str], None] = stderr_line,
    ) -> None:
        if limit < 2:
            raise ValueError("a notification queue holds at least 2 events")
        self._retry = retry or Retry()
        checked = [check_url(url) for url in dict.fromkeys(urls)]  # before any thread starts
        self._receivers = [_Receiver(url, secret, self._retry, limit, log) for url in checked]

    def send(self, event: Event) -> None:
        """Queue the event for every URL and return at once (from any thread)."""
        body = json.dumps(event.payload(), separators=(",", ":")).encode()
        delivery = _Delivery(event, body, str(uuid.uuid4()), time.monotonic() + self._retry.within)
        for receiver in self._receivers:
            receiver.put(delivery)

    def close(self, grace: float = 5.0) -> None:
        """Give queued events up to `grace` seconds (all receivers together), then stop;
        what is still undelivered is reported."""
        deadline = time.monotonic() + grace
        for receiver in self._receivers:
            receiver.finish()
        for receiver in self._receivers:
            receiver.stop(max(0.0, deadline - time.monotonic()))

    async def aclose(self, grace: float = 5.0) -> None:
        await asyncio.to_thread(self.close, grace)
