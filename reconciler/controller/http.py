"""The controller's HTTP side (SPEC §5): probes, metrics, the JSON API, the status page
and the Git webhook, served by the standard library's ThreadingHTTPServer in threads of
its own while the controller's asyncio loop runs in the main thread. It only reads the
controller through `View` (thread safe) and only acts on it through `View.poke`.

    GET  /healthz                          200 "ok" while the process serves
    GET  /readyz                           200 when View.ready(), else 503 with the reason
    GET  /metrics                          Prometheus text format
    GET  /api/deployments                  {"deployments": [...]}
    GET  /api/deployments/<d>              the deployment's JSON, or 404 {"error": ...}
    GET  /api/deployments/<d>/history      its history JSON, or 404
    GET  /                                 the status page (HTML)
    GET  /deployments/<d>                  one deployment's page
    POST /hooks/git                        a GitHub or GitLab push event (see webhook.py)

HEAD is answered wherever GET is. Unknown paths are 404, other methods 405.

**Authentication.** With an API token, everything but `/healthz`, `/readyz` and
`/hooks/git` needs it, compared in constant time, as either `Authorization: Bearer
<token>` (scripts, Prometheus' `authorization` setting) or HTTP Basic auth with the
token as the password and any user name (browsers: a 401 offers both schemes, so a
browser asks once and then remembers it for the session). A token is never accepted in
the URL, where it would land in logs and browser history. Without a token nothing asks
for one: bind to a private address then.

**Webhook.** Without a webhook secret `/hooks/git` is 404. A request whose signature or
token is missing or wrong is 401 and pokes nothing; bodies over 5 MiB are 413 (unread).
GitHub's `ping` is 200; any other authentic event pokes the loops tracking the
repositories it names (all of them when it names none we can read) and answers 202
`{"poked": n}`.

Requests are not logged (probes and scrapes every few seconds would drown the log);
handler failures are, without tokens or secrets, which never appear in a path.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, cast
from urllib.parse import unquote, urlsplit

from reconciler.controller import page, webhook
from reconciler.controller.metrics import Metrics

log = logging.getLogger(__name__)

MAX_HOOK_BODY = 5 * 1024 * 1024  # GitHub push payloads are far smaller
REQUEST_TIMEOUT = 30.0  # seconds a client may take to send its request
STOP_WITHIN = 0.1  # seconds: how often serve_forever looks for stop()
# The page has no scripts and no external assets, whatever a commit subject may contain.
_PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
_CHALLENGE = ('Bearer realm="reconciler"', 'Basic realm="reconciler", charset="UTF-8"')


class View(Protocol):
    """What the HTTP side reads; the controller implements it (thread safe)."""

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
    def __init__(self, view: View, settings: HttpSettings, metrics: Metrics) -> None:
        # An empty token or secret would let anyone in: refuse it rather than guess.
        if settings.api_token == "":
            raise ValueError("the API token is empty")
        if settings.webhook_secret == "":
            raise ValueError("the webhook secret is empty")
        self.view = view
        self.settings = settings
        self.metrics = metrics
        self._bind = parse_listen(settings.listen)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind (OSError when the address is taken) and serve in a daemon thread."""
        self._server = _Server(self._bind, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": STOP_WITHIN},
            name="reconciler-http",
            daemon=True,
        )
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("the HTTP server is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        """Stop serving and close the socket; requests in flight finish in their threads."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server, self._thread = None, None


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` or `[v6 address]:port` → (host, port); ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""  # a bare IPv6 address is ambiguous with its port
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"listen address {listen!r}: expected host:port, e.g. 127.0.0.1:8430")
    return host, int(port)


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


# --- the server -----------------------------------------------------------------------


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str
    headers: list[tuple[str, str]] = field(default_factory=list)


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


@dataclass(frozen=True)
class _Route:
    methods: tuple[str, ...]
    protected: bool  # needs the API token when one is set
    handle: Callable[[], _Response]


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung client never keeps the process alive

    def __init__(self, address: tuple[str, int], owner: HttpServer) -> None:
        self.owner = owner
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves its own name (getfqdn), which can take seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(BaseHTTPRequestHandler):
    server_version = "reconciler"
    sys_version = ""
    timeout = REQUEST_TIMEOUT

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        """No access log; see the module docstring."""

    def log_error(self, format: str, *args: Any) -> None:
        # Malformed requests and timeouts: the client's problem, not worth a warning.
        log.debug("HTTP client %s: " + format, self.client_address[0], *args)

    @property
    def _owner(self) -> HttpServer:
        return cast(_Server, self.server).owner

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        try:
            response = self._handle(method, path)
        except Exception:
            log.exception("HTTP %s %s failed", method, path)
            response = _json(500, {"error": "internal error (see the controller's log)"})
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for name, value in response.headers:
                self.send_header(name, value)
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(response.body)
        except ConnectionError:
            pass  # the client went away; nothing to tell anyone

    def _handle(self, method: str, path: str) -> _Response:
        route = self._route([unquote(p) for p in path.split("/") if p])
        if route is None:
            return _json(404, {"error": f"no such path: {path}"})
        allowed = route.methods + (("HEAD",) if "GET" in route.methods else ())
        if method not in allowed:
            return _json(
                405,
                {"error": f"{method} is not allowed here; use {', '.join(allowed)}"},
                [("Allow", ", ".join(allowed))],
            )
        token = self._owner.settings.api_token
        given = self.headers.get("Authorization")
        if route.protected and token is not None and not authorized(given, token):
            challenge = [("WWW-Authenticate", c) for c in _CHALLENGE]
            return _json(401, {"error": "a valid API token is required"}, challenge)
        return route.handle()

    def _route(self, parts: list[str]) -> _Route | None:
        view = self._owner.view
        match parts:
            case []:
                return _Route(("GET",), True, self._overview)
            case ["healthz"]:
                return _Route(("GET",), False, lambda: _text(200, "ok"))
            case ["readyz"]:
                return _Route(("GET",), False, self._ready)
            case ["metrics"]:
                return _Route(("GET",), True, self._metrics)
            case ["api", "deployments"]:
                return _Route(
                    ("GET",), True, lambda: _json(200, {"deployments": view.deployments()})
                )
            case ["api", "deployments", name]:
                return _Route(("GET",), True, lambda: _found(view.deployment(name), name))
            case ["api", "deployments", name, "history"]:
                return _Route(("GET",), True, lambda: _found(view.history(name), name))
            case ["deployments", name]:
                return _Route(("GET",), True, lambda: self._detail(name))
            case ["hooks", "git"] if self._owner.settings.webhook_secret is not None:
                return _Route(("POST",), False, self._hook)
        return None

    def _ready(self) -> _Response:
        ready, why = self._owner.view.ready()
        return _text(200 if ready else 503, why or ("ready" if ready else "not ready"))

    def _metrics(self) -> _Response:
        body, content_type = self._owner.metrics.render()
        return _Response(200, body, content_type)

    def _overview(self) -> _Response:
        view = self._owner.view
        deployments = view.deployments()
        histories = {
            str(d.get("deployment")): _rows(view.history(str(d.get("deployment"))))
            for d in deployments
        }
        text = page.overview(
            deployments,
            histories,
            ready=view.ready(),
            commit_url=self._owner.settings.commit_url,
            now=datetime.now(UTC),
        )
        return _html(200, text)

    def _detail(self, name: str) -> _Response:
        view = self._owner.view
        now = datetime.now(UTC)
        deployment = view.deployment(name)
        if deployment is None:
            return _html(404, page.not_found(f"No deployment named {name!r}.", now))
        text = page.detail(
            deployment,
            _rows(view.history(name)),
            commit_url=self._owner.settings.commit_url,
            now=now,
        )
        return _html(200, text)

    def _hook(self) -> _Response:
        secret = cast(str, self._owner.settings.webhook_secret)  # routed only when set
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return _json(411, {"error": "send a Content-Length"})
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return _json(411, {"error": "send a Content-Length"})
        if length < 0:
            return _json(400, {"error": "bad Content-Length"})
        if length > MAX_HOOK_BODY:
            return _json(413, {"error": f"the body is larger than {MAX_HOOK_BODY} bytes"})
        body = self.rfile.read(length)
        if len(body) < length:
            return _json(400, {"error": "the body is shorter than its Content-Length"})
        headers = dict(self.headers.items())
        forge = webhook.verify(headers, body, secret)
        if forge is None:
            log.warning(
                "webhook from %s refused: signature or token missing or wrong",
                self.client_address[0],
            )
            return _json(401, {"error": "signature or token missing or wrong"})
        if self.headers.get("X-GitHub-Event") == "ping":
            return _json(200, {"ok": True})
        poked = self._owner.view.poke(webhook.repo_urls(body))
        log.debug("webhook from %s: %d loops poked", forge, poked)
        return _json(202, {"poked": poked})


def _found(value: dict[str, Any] | list[dict[str, Any]] | None, name: str) -> _Response:
    if value is None:
        return _json(404, {"error": f"no deployment named {name!r}"})
    return _json(200, value)


def _rows(history: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [r for r in history or [] if isinstance(r, dict)]
