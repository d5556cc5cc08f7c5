"""`reconciler run` end to end, with a real Git server (git daemon on loopback) as the
remote: it deploys the head, then each new commit; a commit that fails validation leaves
the old generation serving and sets Stalled, until a good one recovers; a killed process
is re-activated by self-heal; unsigned commits are refused when allowed signers are
configured; SIGTERM during a transition leaves a consistent state and exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import RECONCILER, clean_env, commit, git, make_repo, run_cli

pytestmark = pytest.mark.slow

HELLO = """#!/usr/bin/env python3
import http.server, os, time
MESSAGE = "{message}"
time.sleep({delay})  # a slow start, when the test wants one
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(MESSAGE.encode())
    def log_message(self, *args):
        pass
http.server.HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Hello).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_HOSTS = iter(range(1, 250))
ADDRESS = ["127.0.0.1"]


def address() -> str:
    return ADDRESS[0]


def next_address() -> str:
    """A loopback address of this test's own: suites running side by side, and the
    previous test's processes, must not hold our ports."""
    pid = os.getpid()
    ADDRESS[0] = f"127.{150 + pid % 50}.{pid // 50 % 250}.{next(_HOSTS)}"
    return ADDRESS[0]


def hello_files(message: str, delay: float = 0) -> dict[str, str]:
    return {
        "reconciler.yaml": (
            "deployments:\n  web:\n    models: [models.yaml]\n    branch: main\n"
            "    interval: 1s\n    selfHeal: true\n"
        ),
        "models.yaml": (
            f"machines:\n  m1: {{deployment: {{targetEnv: local, address: {address()}}}}}\n"
            "packages:\n  hello: {src: hello}\n"
            "services:\n  hello:\n    package: hello\n    type: process\n"
            "    command: bin/hello\n    port: auto\n"
            "    healthCheck: {http: /, timeout: 20s}\n"
            "distribution:\n  hello: [m1]\n"
        ),
        "hello/bin/hello": HELLO.format(message=message, delay=delay),
    }


@dataclass
class Remote:
    """A bare repository served by git daemon, and a work tree that pushes to it."""

    url: str
    work: Path

    def push(self, files: dict[str, str], message: str, *sign: str) -> str:
        sha = commit(self.work, files, message) if not sign else self._signed(files, message, sign)
        (self.work / "hello/bin/hello").chmod(0o755)
        git(self.work, "add", "-A")
        if git(self.work, "status", "--porcelain"):
            git(self.work, "commit", "-q", "-m", "executable", *(["-S"] if sign else []))
            sha = git(self.work, "rev-parse", "HEAD")
        git(self.work, "push", "-q", "origin", "main")
        return sha

    def _signed(self, files: dict[str, str], message: str, sign: tuple[str, ...]) -> str:
        for key, value in zip(sign[::2], sign[1::2], strict=True):
            git(self.work, "config", key, value)
        commit(self.work, files, message)
        git(self.work, "commit", "-q", "--amend", "-S", "--no-edit")
        return git(self.work, "rev-parse", "HEAD")


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    bare = tmp_path / "served" / "models.git"
    bare.parent.mkdir()
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    port = free_port()
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--enable=receive-pack",
            "--listen=127.0.0.1",
            f"--port={port}",
            f"--base-path={bare.parent}",
            str(bare.parent),
        ],
        env=clean_env(),
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline, "git daemon did not start"
            time.sleep(0.05)
        url = f"git://127.0.0.1:{port}/models.git"
        next_address()
        work = make_repo(tmp_path / "work", hello_files("v1"))
        (work / "hello/bin/hello").chmod(0o755)
        commit(work, {}, "executable")
        git(work, "remote", "add", "origin", url)
        git(work, "push", "-q", "origin", "main")
        yield Remote(url, work)
    finally:
        daemon.terminate()
        daemon.wait()


@dataclass
class Controller:
    proc: subprocess.Popen[str]
    state: Path
    log: Path

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                got = check()
            except (OSError, ValueError, LookupError, sqlite3.Error):
                got = None
            if got:
                return got
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}\n{self.log.read_text()}")

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{self.state}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def conditions(self) -> dict[str, dict[str, Any]]:
        raw = self.query("SELECT conditions FROM deployments WHERE name = 'web'")[0][0]
        return {c["type"]: c for c in json.loads(raw)}

    def endpoint(self) -> str:
        row = self.query("SELECT value FROM allocations WHERE key LIKE 'port/web/hello@m1'")
        return f"http://{address()}:{row[0][0]}/"


def answer(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as r:
        return str(r.read().decode())


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Controller]]:
    started: list[Controller] = []

    def launch(url: str, *extra: str) -> Controller:
        state = tmp_path / "controller" / "state.db"
        log = tmp_path / "controller.log"
        proc = subprocess.Popen(
            [
                RECONCILER,
                "--repo",
                url,
                "--state",
                str(state),
                "run",
                "--listen",
                f"127.0.0.1:{free_port()}",
                *extra,
            ],
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
            text=True,
        )
        started.append(Controller(proc, state, log))
        return started[-1]

    yield launch
    for c in started:
        if c.proc.poll() is None:
            c.proc.send_signal(signal.SIGTERM)
            c.proc.wait(timeout=60)
        done = run_cli("--state", str(c.state), "-d", "web", "destroy", "--yes", cwd=tmp_path)
        assert done.returncode == 0, done.stderr


def test_the_controller_follows_the_branch_recovers_and_heals(
    remote: Remote, start: Callable[..., Controller]
) -> None:
    c = start(remote.url)
    c.wait("v1 to serve", lambda: answer(c.endpoint()) == "v1")
    c.wait("Ready", lambda: c.conditions()["Ready"]["status"] == "True")

    remote.push(hello_files("v2"), "hello v2")
    c.wait("v2 to serve", lambda: answer(c.endpoint()) == "v2")

    bad = hello_files("v3")
    bad["models.yaml"] = bad["models.yaml"].replace("port: auto", "port: auto\n    colour: red")
    broken = remote.push(bad, "a typo in the models")
    stalled = c.wait(
        "Stalled", lambda: c.conditions()["Stalled"]["status"] == "True" and c.conditions()
    )
    assert stalled["Stalled"]["reason"] == "InvalidModels"
    assert "colour" in stalled["Stalled"]["message"]
    assert answer(c.endpoint()) == "v2"  # the last good generation keeps serving
    assert c.query("SELECT last_applied_sha FROM deployments")[0][0] != broken

    remote.push(hello_files("v4"), "hello v4, models fixed")
    c.wait("v4 to serve", lambda: answer(c.endpoint()) == "v4")
    c.wait("Stalled cleared", lambda: c.conditions()["Stalled"]["status"] == "False")

    # self-heal: a killed process is started again with its recorded request
    pid_file = next(c.state.parent.glob("machines/m1/deployments/web/instances/hello/pid.json"))
    pid = json.loads(pid_file.read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)
    c.wait(
        "self-heal",
        lambda: json.loads(pid_file.read_text())["pid"] != pid and answer(c.endpoint()) == "v4",
    )
    c.wait("the log to say so", lambda: "self-heal re-activated hello@m1" in c.log.read_text())

    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(timeout=60) == 0


def test_unsigned_commits_are_refused_with_allowed_signers(
    remote: Remote, start: Callable[..., Controller], tmp_path: Path
) -> None:
    key = tmp_path / "signing_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"author@example.test {key.with_suffix('.pub').read_text()}")
    c = start(remote.url, "--allowed-signers", str(signers))
    stalled = c.wait(
        "Stalled", lambda: c.conditions()["Stalled"]["status"] == "True" and c.conditions()
    )
    assert stalled["Stalled"]["reason"] == "UntrustedCommit"
    assert "is not signed" in stalled["Stalled"]["message"]
    assert c.query("SELECT count(*) FROM attempts") == [(0,)]

    remote.push(
        hello_files("signed"),
        "a signed commit",
        "gpg.format",
        "ssh",
        "user.signingkey",
        str(key),
    )
    c.wait("the signed commit to serve", lambda: answer(c.endpoint()) == "signed")


def test_sigterm_during_a_transition_settles_and_exits_0(
    remote: Remote, start: Callable[..., Controller], tmp_path: Path
) -> None:
    c = start(remote.url)
    c.wait("v1 to serve", lambda: answer(c.endpoint()) == "v1")
    remote.push(hello_files("slow", delay=4), "a slow-starting hello")
    log = c.state.parent / "machines/m1/deployments/web/instances/hello/log"
    c.wait("the new version starting", lambda: log.read_text().count(" starting ") >= 2)
    reconciling = c.conditions()["Reconciling"]
    assert reconciling["status"] == "True" and reconciling["reason"] == "Applying"
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(timeout=60) == 0
    statuses = [s for (s,) in c.query("SELECT status FROM attempts ORDER BY started_at")]
    assert statuses[0] == "succeeded" and statuses[-1] in ("rolled_back", "succeeded")
    assert "running" not in statuses
    done = run_cli("--state", str(c.state), "-d", "web", "check", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + log.read_text()  # what runs is what is recorded


def test_run_once_on_a_models_folder_inside_a_local_work_tree(tmp_path: Path) -> None:
    next_address()
    files = {f"ops/models/{k}": v for k, v in hello_files("local").items()}
    repo = make_repo(
        tmp_path / "project", {"README": "a project with its models inside\n", **files}
    )
    (repo / "ops/models/hello/bin/hello").chmod(0o755)
    commit(repo, {}, "executable")
    state = tmp_path / "state.db"
    args = ("--repo", str(repo / "ops/models"), "--state", str(state), "run", "--once")
    try:
        first = run_cli(*args, cwd=tmp_path, timeout=120)
        assert first.returncode == 0, first.stderr
        assert "web: " in first.stderr and " applied in " in first.stderr
        row = (
            sqlite3.connect(state)
            .execute("SELECT value FROM allocations WHERE key = 'port/web/hello@m1'")
            .fetchone()
        )
        assert answer(f"http://{address()}:{row[0]}/") == "local"
        again = run_cli(*args, cwd=tmp_path, timeout=120)
        assert again.returncode == 0, again.stderr
        assert " unchanged in " in again.stderr
    finally:
        run_cli("--state", str(state), "-d", "web", "destroy", "--yes", cwd=tmp_path)
