"""The controller's HTTP side against a fake View: probes, the JSON API, the API token,
the webhook, /metrics and the status page, all over real HTTP on 127.0.0.1 (an
ephemeral port). The samples are `status` and `history --format json` of example-repo
deployed locally (a generation that moved the staff service, a rolled back attempt
whose subject holds a <script> tag, one killed process)."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import http.client
import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from reconciler.controller import page
from reconciler.controller.http import (
    HttpServer,
    HttpSettings,
    View,
    authorized,
    parse_listen,
)
from reconciler.controller.metrics import Metrics
from reconciler.errors import UserError
from tests.support import make_repo, run_cli

SAMPLES = Path(__file__).parent / "samples"
TOKEN = "api-token-Zq9"
SECRET = "hook-secret-7x"
COMMIT_URL = "https://git.example.org/org/models/commit/{sha}"
# When the samples were recorded, give or take: relative times stay plausible.
NOW = datetime(2026, 11, 25, 4, 10, tzinfo=UTC)


def sample_status() -> dict[str, Any]:
    """`status --format json` plus the fields the controller adds."""
    status: dict[str, Any] = json.loads((SAMPLES / "status.json").read_text())
    status["controller"] = {
        "autoApply": True,
        "selfHeal": True,
        "paused": False,
        "nextPollIn": 12.5,
        "backoffUntil": "2026-11-25T04:12:30+00:00",
        "lastError": "apply failed: activate failed: could not start staff-service",
        "trackedBranch": "main",
        "head": status["lastAttemptedRevision"],
    }
    return status


def sample_history() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads((SAMPLES / "history.json").read_text())
    return rows


@dataclass
class FakeView:
    statuses: dict[str, dict[str, Any]]
    histories: dict[str, list[dict[str, Any]]]
    is_ready: tuple[bool, str] = (True, "every deployment reconciled once")
    pokes: list[list[str]] = field(default_factory=list)
    fail: bool = False
    logs: dict[tuple[str, str], str] = field(default_factory=dict)

    def deployments(self) -> list[dict[str, Any]]:
        if self.fail:
            raise RuntimeError("the view broke")
        return list(self.statuses.values())

    def deployment(self, name: str) -> dict[str, Any] | None:
        return self.statuses.get(name)

    def history(self, name: str) -> list[dict[str, Any]] | None:
        return self.histories.get(name, []) if name in self.statuses else None

    def instance_log(self, deployment: str, key: str) -> str | None:
        return self.logs.get((deployment, key))

    def ready(self) -> tuple[bool, str]:
        return self.is_ready

    def poke(self, repo_urls: list[str]) -> int:
        self.pokes.append(repo_urls)
        return len(self.statuses)


def sample_view() -> FakeView:
    return FakeView({"local": sample_status()}, {"local": sample_history()})


@contextmanager
def serving(view: View, metrics: Metrics | None = None, **settings: Any) -> Iterator[str]:
    """The base URL of an HttpServer on an ephemeral port of 127.0.0.1, served by an
    event loop in a thread (the controller's loop in real life)."""
    server = HttpServer(view, HttpSettings("127.0.0.1:0", **settings), metrics or Metrics())
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        host, port = server.address
        yield f"http://{host}:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        assert self.headers["Content-Type"] == "application/json"
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


# Never through a proxy from the environment: these are local test servers.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> Reply:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _opener.open(request, timeout=10) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers, error.read())


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def signed(body: bytes, secret: str = SECRET, event: str = "push") -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-GitHub-Event": event,
        "Content-Type": "application/json",
    }


PUSH = json.dumps(
    {"ref": "refs/heads/main", "repository": {"clone_url": "https://git.example.org/m.git"}}
).encode()


# --- probes and the API ---------------------------------------------------------------


def test_healthz_and_readyz() -> None:
    view = sample_view()
    view.is_ready = (False, "first pass over 1 deployment not done yet")
    with serving(view) as url:
        health = fetch(f"{url}/healthz")
        assert (health.status, health.text) == (200, "ok\n")
        ready = fetch(f"{url}/readyz")
        assert ready.status == 503
        assert "first pass" in ready.text
        view.is_ready = (True, "")
        assert fetch(f"{url}/readyz").status == 200


def test_api_deployments() -> None:
    view = sample_view()
    with serving(view) as url:
        listed = fetch(f"{url}/api/deployments").json()
        assert [d["deployment"] for d in listed["deployments"]] == ["local"]
        assert fetch(f"{url}/api/deployments/local").json() == view.statuses["local"]
        history = fetch(f"{url}/api/deployments/local/history").json()
        assert history == view.histories["local"]
        assert history[0]["result"] == "rolled_back"
        for path in ("/api/deployments/nope", "/api/deployments/nope/history"):
            missing = fetch(url + path)
            assert missing.status == 404
            assert "nope" in missing.json()["error"]


def test_unknown_paths_and_wrong_methods() -> None:
    with serving(sample_view(), webhook_secret=SECRET) as url:
        for path in ("/nope", "/api", "/api/deployments/local/history/x", "/hooks"):
            assert fetch(url + path).status == 404, path
        wrong = fetch(f"{url}/healthz", method="POST", body=b"")
        assert wrong.status == 405
        assert wrong.headers["Allow"] == "GET, HEAD"
        assert fetch(f"{url}/api/deployments", method="DELETE").status == 405
        hook = fetch(f"{url}/hooks/git")
        assert (hook.status, hook.headers["Allow"]) == (405, "POST")


def test_head_answers_like_get_without_a_body() -> None:
    with serving(sample_view()) as url:
        reply = fetch(f"{url}/api/deployments/local", method="HEAD")
        full = fetch(f"{url}/api/deployments/local")
        assert (reply.status, reply.body) == (200, b"")
        assert reply.headers["Content-Length"] == str(len(full.body))


def test_a_failing_view_is_a_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    view = sample_view()
    view.fail = True
    with caplog.at_level(logging.ERROR), serving(view) as url:
        reply = fetch(f"{url}/api/deployments")
        assert reply.status == 500
        assert "internal error" in reply.json()["error"]
        assert fetch(f"{url}/healthz").status == 200  # the server keeps serving
    assert "the view broke" in caplog.text


def test_an_instances_log_is_served_as_plain_text() -> None:
    view = sample_view()
    view.logs[("local", "staff@m1")] = "starting staff\n<b>not html</b>\n"
    with serving(view, api_token=TOKEN) as url:
        path = "/api/deployments/local/instances/staff%40m1/log"
        assert fetch(url + path).status == 401
        reply = fetch(url + path, headers=bearer())
        assert (reply.status, reply.text) == (200, "starting staff\n<b>not html</b>\n")
        assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        missing = fetch(f"{url}/api/deployments/local/instances/nope@m1/log", headers=bearer())
        assert missing.status == 404
        assert "nope@m1" in missing.json()["error"]


# --- the API token --------------------------------------------------------------------


def test_the_token_guards_everything_but_probes_and_the_webhook() -> None:
    view = sample_view()
    with serving(view, api_token=TOKEN, webhook_secret=SECRET) as url:
        for path in ("/", "/deployments/local", "/metrics", "/api/deployments"):
            refused = fetch(url + path)
            assert refused.status == 401, path
            assert "Bearer" in refused.headers.get_all("WWW-Authenticate", [])[0]
            assert fetch(url + path, headers=bearer("wrong")).status == 401
            assert fetch(url + path, headers=bearer()).status == 200
        assert fetch(f"{url}/api/deployments/nope").status == 401  # no hint what exists
        assert fetch(f"{url}/healthz").status == 200
        assert fetch(f"{url}/readyz").status == 200
        assert fetch(f"{url}/hooks/git", "POST", PUSH, signed(PUSH)).status == 202


def test_browsers_may_send_the_token_as_the_basic_auth_password() -> None:
    with serving(sample_view(), api_token=TOKEN) as url:
        challenges = fetch(url).headers.get_all("WWW-Authenticate", [])
        assert any(c.startswith("Basic ") for c in challenges)
        basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
        assert fetch(url, headers={"Authorization": f"Basic {basic}"}).status == 200
        assert fetch(f"{url}/?token={TOKEN}").status == 401  # never in the URL


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer  {TOKEN} ", True),
        (f"Bearer {TOKEN}x", False),
        ("Bearer ", False),
        (TOKEN, False),
        (None, False),
        ("Basic " + base64.b64encode(f":{TOKEN}".encode()).decode(), True),
        ("Basic " + base64.b64encode(TOKEN.encode()).decode(), False),  # no password part
        ("Basic not-base64!", False),
        ("Basic " + base64.b64encode(b"u:\xff").decode(), False),
        ("Bearer ünïcode", False),
    ],
)
def test_authorized(header: str | None, ok: bool) -> None:
    assert authorized(header, TOKEN) is ok


def test_empty_tokens_and_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="token"):
        HttpServer(sample_view(), HttpSettings("127.0.0.1:0", api_token=""), Metrics())
    with pytest.raises(ValueError, match="secret"):
        HttpServer(sample_view(), HttpSettings("127.0.0.1:0", webhook_secret=""), Metrics())


@pytest.mark.parametrize(
    ("listen", "parsed"),
    [
        ("127.0.0.1:8430", ("127.0.0.1", 8430)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        (":8430", ("", 8430)),
        ("[::1]:8430", ("::1", 8430)),
    ],
)
def test_parse_listen(listen: str, parsed: tuple[str, int]) -> None:
    assert parse_listen(listen) == parsed


@pytest.mark.parametrize("listen", ["8430", "localhost", "host:http", "::1:8430", "h:70000"])
def test_parse_listen_refuses(listen: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_listen(listen)


def test_a_busy_listen_address_is_a_message_saying_what_to_do() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HttpServer(sample_view(), HttpSettings(f"127.0.0.1:{port}"), Metrics())
        with pytest.raises(UserError) as refused:
            asyncio.run(server.start())
    assert str(refused.value) == (
        f"--listen 127.0.0.1:{port}: something else already listens there; "
        "stop it, or choose a free address with --listen HOST:PORT"
    )


@pytest.mark.slow
def test_run_on_a_busy_listen_address_says_so_in_one_line(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "models",
        {
            "reconciler.yaml": "deployments:\n  web:\n    models: [models.yaml]\n",
            "models.yaml": "machines:\n  m1: {deployment: {targetEnv: local}}\n",
        },
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        state = str(tmp_path / "state.db")
        done = run_cli(
            "--repo", str(repo), "--state", state, "run", "--listen", listen, cwd=tmp_path
        )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: --listen {listen}: something else already listens there; "
        "stop it, or choose a free address with --listen HOST:PORT"
    )


def test_a_malformed_listen_address_is_a_user_error() -> None:
    with pytest.raises(UserError, match="expected host:port"):
        HttpServer(sample_view(), HttpSettings("localhost"), Metrics())


# --- the webhook ----------------------------------------------------------------------


def test_the_webhook_is_404_without_a_secret() -> None:
    view = sample_view()
    with serving(view) as url:
        assert fetch(f"{url}/hooks/git", "POST", PUSH, signed(PUSH)).status == 404
    assert view.pokes == []


def test_a_wrong_signature_pokes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    view = sample_view()
    with serving(view, webhook_secret=SECRET) as url:
        assert fetch(f"{url}/hooks/git", "POST", PUSH, signed(PUSH, "guess")).status == 401
        assert fetch(f"{url}/hooks/git", "POST", PUSH, {"X-GitHub-Event": "push"}).status == 401
        assert fetch(f"{url}/hooks/git", "POST", PUSH, {"X-Gitlab-Token": "guess"}).status == 401
    assert view.pokes == []
    assert "refused" in caplog.text
    assert SECRET not in caplog.text


def test_an_authentic_push_pokes_the_loops() -> None:
    view = sample_view()
    with serving(view, webhook_secret=SECRET) as url:
        reply = fetch(f"{url}/hooks/git", "POST", PUSH, signed(PUSH))
        assert (reply.status, reply.json()) == (202, {"poked": 1})
        gitlab = {"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Push Hook"}
        assert fetch(f"{url}/hooks/git", "POST", b"{}", gitlab).status == 202
    assert view.pokes == [["https://git.example.org/m.git"], []]


def test_a_github_ping_is_answered_without_a_poke() -> None:
    view = sample_view()
    ping = b'{"zen": "Design for failure.", "hook_id": 1}'
    with serving(view, webhook_secret=SECRET) as url:
        assert fetch(f"{url}/hooks/git", "POST", ping, signed(ping, event="ping")).status == 200
    assert view.pokes == []


def test_a_signed_payload_too_deep_to_read_pokes_every_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Like any signed payload we cannot read: the loops poll, nothing else is trusted."""
    view = sample_view()
    deep = b"[" * 200_000 + b"]" * 200_000
    with caplog.at_level(logging.DEBUG), serving(view, webhook_secret=SECRET) as url:
        reply = fetch(f"{url}/hooks/git", "POST", deep, signed(deep))
    assert (reply.status, reply.json()) == (202, {"poked": 1})
    assert view.pokes == [[]]
    assert "Recursion" not in caplog.text and "Traceback" not in caplog.text


def raw_post(url: str, headers: dict[str, str], body: bytes = b"") -> int:
    """A POST whose headers may lie (urllib would fix Content-Length up)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest("POST", "/hooks/git")
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        return connection.getresponse().status
    finally:
        connection.close()


def test_webhook_bodies_are_capped_and_measured() -> None:
    view = sample_view()
    with serving(view, webhook_secret=SECRET) as url:
        # Refused from the header alone: nothing is read.
        assert raw_post(url, {"Content-Length": str(5 * 1024 * 1024 + 1)}) == 413
        assert raw_post(url, {}) == 411
        assert raw_post(url, {"Content-Length": "many"}) == 400  # malformed (RFC 9112 §6.3)
        assert raw_post(url, {"Content-Length": "-1"}) == 400
        assert raw_post(url, {"Transfer-Encoding": "chunked"}, b"0\r\n\r\n") == 411
    assert view.pokes == []


# --- metrics --------------------------------------------------------------------------


def test_metrics_are_served_in_prometheus_text_format() -> None:
    metrics = Metrics()
    metrics.reconciled("local", "applied", 2.5)
    metrics.reconciled("local", "failed", 0.4)
    metrics.reconciled("local", "unchanged", 0.1)
    metrics.transferred("local", 73_000)
    metrics.instances("local", {"active": 8, "dead": 1})
    metrics.applied("local", 1_795_579_546.0)
    with serving(sample_view(), metrics) as url:
        reply = fetch(f"{url}/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = reply.text
    for line in (
        'reconciler_reconciles_total{deployment="local",result="applied"} 1.0',
        'reconciler_reconciles_total{deployment="local",result="failed"} 1.0',
        'reconciler_reconcile_duration_seconds_count{deployment="local"} 3.0',
        'reconciler_reconcile_failures_total{deployment="local"} 1.0',
        'reconciler_transferred_bytes_total{deployment="local"} 73000.0',
        'reconciler_instances{deployment="local",state="active"} 8.0',
        'reconciler_instances{deployment="local",state="dead"} 1.0',
        'reconciler_last_applied_timestamp_seconds{deployment="local"} 1.795579546e+09',
    ):
        assert line in text.splitlines(), line


def test_instance_counts_replace_the_deployments_previous_ones() -> None:
    metrics = Metrics()
    metrics.instances("a", {"active": 2, "dead": 1})
    metrics.instances("b", {"missing": 3})
    metrics.instances("a", {"active": 3})
    text = metrics.render()[0].decode()
    assert 'reconciler_instances{deployment="a",state="active"} 3.0' in text
    assert 'state="dead"' not in text
    assert 'reconciler_instances{deployment="b",state="missing"} 3.0' in text


def test_failures_count_invalid_and_refused_commits_too() -> None:
    metrics = Metrics()
    for result in ("failed", "invalid", "refused", "applied", "unchanged"):
        metrics.reconciled("a", result, 1.0)
    assert 'reconciler_reconcile_failures_total{deployment="a"} 3.0' in metrics.render()[0].decode()


def test_every_controller_has_a_registry_of_its_own() -> None:
    first, second = Metrics(), Metrics()
    first.reconciled("a", "applied", 1.0)
    assert "reconciler_reconciles_total{" not in second.render()[0].decode()


# --- the status page ------------------------------------------------------------------


def test_the_page_shows_every_deployment_instance_and_condition() -> None:
    view = sample_view()
    with serving(view, commit_url=COMMIT_URL) as url:
        reply = fetch(url)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in reply.headers["Content-Security-Policy"]
    html = reply.text
    assert '<meta http-equiv="refresh" content="5">' in html
    status = view.statuses["local"]
    for instance in status["instances"]:
        assert instance["key"] in html
    for condition in ("Ready", "Reconciling", "Stalled", "AttemptFailed", "NotStalled"):
        assert condition in html
    applied = status["lastAppliedRevision"]
    assert f'href="https://git.example.org/org/models/commit/{applied}"' in html
    assert "Grace Hopper" in html
    assert "auto-apply paused" not in html
    assert "backing off until" in html
    assert "next poll in 12 s" in html


def test_the_page_escapes_what_commits_say() -> None:
    view = sample_view()
    with serving(view) as url:
        for path in ("/", "/deployments/local"):
            html = fetch(url + path).text
            assert "<script>" not in html
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
            assert "href=" in html and "/commit/" not in html  # no commit_url: no links


def test_the_detail_page() -> None:
    view = sample_view()
    with serving(view) as url:
        detail = fetch(f"{url}/deployments/local")
        assert detail.status == 200
        assert "No such file or directory" in detail.text  # messages in full
        assert "/api/deployments/local/history" in detail.text
        missing = fetch(f"{url}/deployments/nope")
        assert missing.status == 404
        assert "nope" in missing.text


def test_the_page_when_not_ready_and_empty() -> None:
    view = FakeView({}, {}, is_ready=(False, "starting <up>"))
    with serving(view) as url:
        html = fetch(url).text
    assert "No deployments yet." in html
    assert "Not ready yet: starting &lt;up&gt;" in html


def test_the_page_renders_whatever_it_is_given() -> None:
    """Missing keys and odd values never break the page: it is how problems are seen."""
    odd: list[dict[str, Any]] = [
        {"deployment": "new", "recorded": False, "conditions": [], "machines": [], "instances": []},
        {"deployment": "bare"},
        {
            "deployment": "odd",
            "generation": "?",
            "conditions": [{"type": "Ready"}, "junk"],
            "machines": [{"name": "m", "reachable": False, "error": "timed out\nafter 5 s"}],
            "instances": [{"key": "a@m", "state": "failed", "healthy": False}],
            "controller": {"head": "not a sha <b>", "nextPollIn": None, "paused": True},
            "lastAppliedRevision": 42,
        },
    ]
    html = page.overview(
        odd, {"odd": [{"time": "yesterday"}]}, ready=(True, ""), commit_url=COMMIT_URL, now=NOW
    )
    assert "Nothing applied yet." in html
    assert "auto-apply paused" in html
    assert "·  ·" not in html  # nothing said about autoApply and selfHeal: no empty bits
    assert "<code>not a sha &lt;b</code>" in html  # shortened, and never a link
    assert "/commit/not" not in html
    assert 'title="not a sha &lt;b&gt;"' in html
    assert "yesterday" in html
    assert "0/3 ready" in html


def test_times_are_absolute_and_relative() -> None:
    status = copy.deepcopy(sample_status())
    html = page.detail(status, [], commit_url=None, now=NOW)
    # appliedAt 2026-11-25T04:05:46.820Z, four minutes before NOW
    assert '2026-11-25 04:05:46Z <span class="muted">(4 min ago)</span>' in html
    assert "(in 2 min)" in html  # backoffUntil
