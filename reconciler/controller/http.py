"""The controller's HTTP side (SPEC §5): probes, metrics, the JSON API, the status page
and the Git webhook. It only reads the controller through `View` and only acts on it
through `View.poke`.

    GET  /healthz                          200 "ok" while the process serves
    GET  /readyz                           200 when View.ready(), else 503 with the reason
    GET  /metrics                          Prometheus text format
    GET  /api/deployments                  {"deployments": [...]}
    GET  /api/deployments/<d>              the deployment's JSON, or 404 {"error": ...}
    GET  /api/deployments/<d>/history      its history JSON, or 404
    GET  /api/deployments/<d>/instances/<key>/log   the tail of the instance's log
                                           (text/plain), or 404
    GET  /                                 the status page (HTML)
    GET  /deployments/<d>                  one deployment's page
    POST /hooks/git                        a GitHub or GitLab push event (see webhook.py)

HEAD is answered wherever GET is. Unknown paths are 404, other methods 405.

**Why aiohttp, in the controller's own event loop.** The probes must stay fast while
anyone on the network holds connections open or trickles bodies in, so every connection
must be cheap and none may be a thread: an asyncio server costs a few kilobytes per idle
connection, reads a body only when asked to (the kernel holds back the rest), and
answers `/healthz` between any two steps of everything else. aiohttp is the well-kept
asyncio HTTP/1.1 server: a listen backlog of our choosing (the standard library's was 5,
so 200 concurrent probes waited for SYN retransmits, up to 8 s), bounded header sizes, a
connection that has not sent its headers within IDLE_TIMEOUT is closed, and no access
log. Running in the controller's loop makes `/healthz` an honest liveness probe: a
wedged loop stops answering it. View calls that may touch the disk (history, the page,
a log) run in a small thread pool of their own, so a slow one never stalls the loop nor
takes the threads the controller's own work uses.

**Authentication.** With an API token, everything but `/healthz`, `/readyz` and
`/hooks/git` needs it, compared in constant time, as either `Authorization: Bearer
<token>` (scripts, Prometheus' `authorization` setting) or HTTP Basic auth with the
token as the password and any user name (browsers: a 401 offers both schemes, so a
browser asks once and then remembers it for the session). A token is never accepted in
the URL, where it would land in logs and browser history. Without a token nothing asks
for one: bind to a private address then.

**Webhook.** Without a webhook secret `/hooks/git` is 404. Before a byte of the body is
read: no Content-Length is 411, over 5 MiB is 413, and a request with neither the right
GitLab token nor a well-formed GitHub signature is 401. Only HOOK_READERS bodies are read
at a time (one more is 503 with Retry-After, rather than wait with its body buffered),
each within HOOK_TIMEOUT (else 408), so unauthenticated bodies never hold more than
HOOK_READERS × 5 MiB. A signature or token that is wrong is 401 and pokes nothing.
GitHub's `ping` is 200; any other authentic event pokes the loops tracking the
repositories it names (all of them when it names none we can read, a payload nested too
deep for the JSON parser included: it only ever triggers a poll) and answers 202
`{"poked": n}`.

Requests are not logged (probes and scrapes every few seconds would drown the log);
handler failures are, without tokens or secrets, which never appear in a path.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, cast
from urllib.parse import unquote

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from reconciler.controller import page, webhook
from reconciler.controller.metrics import Metrics
from reconciler.errors import UserError

log = logging.getLogger(__name__)

MAX_HOOK_BODY = 5 * 1024 * 1024  # GitHub push payloads are far smaller
HOOK_READERS = 4  # webhook bodies read at once, before their signature can be checked
HOOK_TIMEOUT = 10.0  # seconds a webhook may take to get a reader and send its body
IDLE_TIMEOUT = 15.0  # seconds a connection may take to send its headers, or sit idle
BACKLOG = 1024  # connections the kernel queues before we accept them (capped by somaxconn)
VIEW_THREADS = 4  # View calls that may touch the disk, at once
STOP_WITHIN = 1.0  # seconds stop() gives requests in flight
# The page has no scripts and no external assets, whatever a commit subject may contain.
_PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
_CHALLENGE = ('Bearer realm="reconciler"', 'Basic realm="reconciler", charset="UTF-8"')

T = TypeVar("T")


class View(Protocol):
    """What the HTTP side reads; the controller implements it (thread safe: all but
    ready() and poke() are called from threads of the HTTP side's own)."""

    def deployments(self) -> list[dict[str, Any]]:
        """Each: the JSON `reconciler status --format json` prints, plus `"controller":
        {autoApply, selfHeal, paused, nextPollIn, backoffUntil, lastError,
        trackedBranch, head}`."""
        ...

    def deployment(self, name: str) -> dict[str, Any] | None: ...

    def history(self, name: str) -> list[dict[str, Any]] | None:
        """What `reconciler history --format json` prints (a list, newest first); None
        for an unknown deployment."""
        ...

    def controllers(self) -> list[dict[str, Any]]:
        """The controller replicas sharing the state (`/api/controllers`)."""
        ...

    def instance_log(self, deployment: str, key: str) -> str | None:
        """The tail of an instance's log; None for an unknown deployment or instance."""
        ...

    def ready(self) -> tuple[bool, str]:
        """(ready, why): e.g. False until the first pass over every deployment is done."""
        ...

    def poke(self, repo_urls: list[str]) -> int:
        """Ask the loops tracking these repositories (all when empty) to poll now;
        returns how many were poked."""
        ...


@dataclass(frozen=True)
class HttpSettings:
    listen: str  # "host:port", "[v6]:port"; port 0 = ephemeral
    api_token: str | None = None  # needed for all but /healthz, /readyz, /hooks/git
    webhook_secret: str | None = None  # None: /hooks/git answers 404
    commit_url: str | None = None  # e.g. "https://github.com/org/repo/commit/{sha}"


class HttpServer:
    """Serves in the running event loop between `await start()` and `await stop()`."""

    def __init__(self, view: View, settings: HttpSettings, metrics: Metrics) -> None:
        # An empty token or secret would let anyone in: refuse it rather than guess.
        if settings.api_token == "":
            raise ValueError("the API token is empty")
        if settings.webhook_secret == "":
            raise ValueError("the webhook secret is empty")
        try:
            self._bind = parse_listen(settings.listen)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.view = view
        self.settings = settings
        self.metrics = metrics
        self._hook_readers = asyncio.Semaphore(HOOK_READERS)
        self._runner: web.AppRunner | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Bind and serve; a UserError saying what to do when the address is taken."""
        app = web.Application(client_max_size=MAX_HOOK_BODY)
        app.router.add_route("*", "/{path:.*}", self._serve)
        runner = web.AppRunner(
            app,
            handle_signals=False,  # SIGTERM is the controller's
            access_log=None,
            logger=_ClientErrorsQuiet(log, {}),
            keepalive_timeout=IDLE_TIMEOUT,  # also bounds the wait for a request's headers
            shutdown_timeout=STOP_WITHIN,
        )
        await runner.setup()
        host, port = self._bind
        try:
            await web.TCPSite(runner, host or None, port, backlog=BACKLOG).start()
        except OSError as e:
            await runner.cleanup()
            raise UserError(listen_error(self.settings.listen, e)) from None
        self._runner = runner
        self._pool = ThreadPoolExecutor(VIEW_THREADS, thread_name_prefix="reconciler-http")

    @property
    def address(self) -> tuple[str, int]:
        if self._runner is None:
            raise RuntimeError("the HTTP server is not started")
        host, port = self._runner.addresses[0][:2]
        return str(host), int(port)

    async def stop(self) -> None:
        """Stop serving and close the socket, giving requests in flight STOP_WITHIN."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._runner, self._pool = None, None

    # --- requests ---------------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        try:
            response = await self._handle(request, path)
        except Exception:
            log.exception("HTTP %s %s failed", request.method, path)
            response = _json(500, {"error": "internal error (see the controller's log)"})
        out = web.Response(status=response.status, body=response.body)
        out.headers["Content-Type"] = response.content_type
        out.headers["Cache-Control"] = "no-store"
        out.headers["X-Content-Type-Options"] = "nosniff"
        out.headers["Server"] = "reconciler"
        for name, value in response.headers:
            out.headers.add(name, value)
        return out

    async def _handle(self, request: web.Request, path: str) -> _Response:
        route = self._route([unquote(p) for p in path.split("/") if p], request)
        if route is None:
            return _json(404, {"error": f"no such path: {path}"})
        allowed = route.methods + (("HEAD",) if "GET" in route.methods else ())
        if request.method not in allowed:
            return _json(
                405,
                {"error": f"{request.method} is not allowed here; use {', '.join(allowed)}"},
                [("Allow", ", ".join(allowed))],
            )
        token = self.settings.api_token
        given = request.headers.get("Authorization")
        if route.protected and token is not None and not authorized(given, token):
            challenge = [("WWW-Authenticate", c) for c in _CHALLENGE]
            return _json(401, {"error": "a valid API token is required"}, challenge)
        return await route.handle()

    def _route(self, parts: list[str], request: web.Request) -> _Route | None:
        view = self.view
        match parts:
            case []:
                return _Route(("GET",), True, lambda: self._call(self._overview))
            case ["healthz"]:
                return _Route(("GET",), False, _healthy)
            case ["readyz"]:
                return _Route(("GET",), False, self._ready)
            case ["metrics"]:
                return _Route(("GET",), True, self._metrics)
            case ["api", "deployments"]:
                return _Route(("GET",), True, lambda: self._call(self._listed))
            case ["api", "controllers"]:
                return _Route(
                    ("GET",),
                    True,
                    lambda: self._call(lambda: _json(200, {"controllers": view.controllers()})),
                )
            case ["api", "deployments", name]:
                return _Route(
                    ("GET",), True, lambda: self._call(lambda: _found(view.deployment(name), name))
                )
            case ["api", "deployments", name, "history"]:
                return _Route(
                    ("GET",), True, lambda: self._call(lambda: _found(view.history(name), name))
                )
            case ["api", "deployments", name, "instances", key, "log"]:
                return _Route(("GET",), True, lambda: self._call(lambda: self._log(name, key)))
            case ["deployments", name]:
                return _Route(("GET",), True, lambda: self._call(lambda: self._detail(name)))
            case ["hooks", "git"] if self.settings.webhook_secret is not None:
                return _Route(("POST",), False, lambda: self._hook(request))
        return None

    async def _call(self, work: Callable[[], T]) -> T:
        """Work that may touch the disk, in the HTTP side's own threads."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    async def _ready(self) -> _Response:
        ready, why = self.view.ready()
        return _text(200 if ready else 503, why or ("ready" if ready else "not ready"))

    async def _metrics(self) -> _Response:
        body, content_type = self.metrics.render()
        return _Response(200, body, content_type)

    def _listed(self) -> _Response:
        return _json(200, {"deployments": self.view.deployments()})

    def _overview(self) -> _Response:
        view = self.view
        deployments = view.deployments()
        histories = {
            str(d.get("deployment")): _rows(view.history(str(d.get("deployment"))))
            for d in deployments
        }
        text = page.overview(
            deployments,
            histories,
            ready=view.ready(),
            commit_url=self.settings.commit_url,
            now=datetime.now(UTC),
        )
        return _html(200, text)

    def _detail(self, name: str) -> _Response:
        view = self.view
        now = datetime.now(UTC)
        deployment = view.deployment(name)
        if deployment is None:
            return _html(404, page.not_found(f"No deployment named {name!r}.", now))
        text = page.detail(
            deployment,
            _rows(view.history(name)),
            commit_url=self.settings.commit_url,
            now=now,
        )
        return _html(200, text)

    def _log(self, name: str, key: str) -> _Response:
        text = self.view.instance_log(name, key)
        if text is None:
            return _json(404, {"error": f"no instance {key!r} in deployment {name!r}"})
        return _Response(200, text.encode(), "text/plain; charset=utf-8")

    async def _hook(self, request: web.Request) -> _Response:
        secret = cast(str, self.settings.webhook_secret)  # routed only when set
        length = request.content_length  # a malformed one never gets here: aiohttp says 400
        if "chunked" in request.headers.get("Transfer-Encoding", "").lower() or length is None:
            return _json(411, {"error": "send a Content-Length"})
        if length > MAX_HOOK_BODY:
            return _json(413, {"error": f"the body is larger than {MAX_HOOK_BODY} bytes"})
        headers = dict(request.headers.items())
        if not webhook.may_be_authentic(headers, secret):
            return self._refused(request)
        if self._hook_readers.locked():  # none may wait for a reader with its body buffered
            busy = {"error": "too many webhook bodies in flight; retry in a few seconds"}
            return _json(503, busy, [("Retry-After", str(int(HOOK_TIMEOUT)))])
        try:
            async with self._hook_readers, asyncio.timeout(HOOK_TIMEOUT):
                body = await request.read()
        except TimeoutError:
            return _json(408, {"error": f"the body took longer than {HOOK_TIMEOUT:.0f} s"})
        except (ConnectionError, HttpProcessingError):  # gone, or closed before the end
            return _json(400, {"error": "the body is shorter than its Content-Length"})
        forge = webhook.verify(headers, body, secret)
        if forge is None:
            return self._refused(request)
        if request.headers.get("X-GitHub-Event") == "ping":
            return _json(200, {"ok": True})
        poked = self.view.poke(webhook.repo_urls(body))
        log.debug("webhook from %s: %d loops poked", forge, poked)
        return _json(202, {"poked": poked})

    def _refused(self, request: web.Request) -> _Response:
        log.warning("webhook from %s refused: signature or token missing or wrong", request.remote)
        return _json(401, {"error": "signature or token missing or wrong"})


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` or `[v6 address]:port` → (host, port); ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""  # a bare IPv6 address is ambiguous with its port
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(
            f"--listen {listen}: expected host:port, e.g. 127.0.0.1:8430 or [::1]:8430"
        )
    return host, int(port)


def listen_error(listen: str, error: OSError) -> str:
    """Why `--listen` cannot be served, and what to do instead."""
    if error.errno == errno.EADDRINUSE:
        return (
            f"--listen {listen}: something else already listens there; "
            "stop it, or choose a free address with --listen HOST:PORT"
        )
    reason = (error.strerror or str(error)).lower()
    return f"--listen {listen}: cannot listen there ({reason}); choose another with --listen"


class _ClientErrorsQuiet(logging.LoggerAdapter[logging.Logger]):
    """aiohttp logs a malformed request with a traceback at ERROR: it is the client's
    problem, worth a debug line. Anything else stays an error."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.debug("HTTP client %s: %s", args[0] if args else "?", exc_info.message)
        else:
            self.error(msg, *args, exc_info=exc_info, **kw)


def authorized(header: str | None, token: str) -> bool:
    """`Bearer <token>`, or Basic with the token as the password; constant time."""
    scheme, _, credentials = (header or "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        given = credentials
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(credentials, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    else:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())


# --- responses ------------------------------------------------------------------------


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Route:
    methods: tuple[str, ...]
    protected: bool  # needs the API token when one is set
    handle: Callable[[], Awaitable[_Response]]


def _json(status: int, value: Any, headers: list[tuple[str, str]] | None = None) -> _Response:
    body = (json.dumps(value, indent=2) + "\n").encode()
    return _Response(status, body, "application/json", headers or [])


def _text(status: int, text: str) -> _Response:
    return _Response(status, (text + "\n").encode(), "text/plain; charset=utf-8")


def _html(status: int, text: str) -> _Response:
    headers = [
        ("Content-Security-Policy", _PAGE_POLICY),
        ("Referrer-Policy", "no-referrer"),  # commit links must not leak this address
    ]
    return _Response(status, text.encode(), "text/html; charset=utf-8", headers)


async def _healthy() -> _Response:
    return _text(200, "ok")


def _found(value: dict[str, Any] | list[dict[str, Any]] | None, name: str) -> _Response:
    if value is None:
        return _json(404, {"error": f"no deployment named {name!r}"})
    return _json(200, value)


def _rows(history: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [r for r in history or [] if isinstance(r, dict)]
