"""Support for the tests of `reconciler run`: a loopback address of the test's own, the
models of one `hello` service, a Git remote that pushes, and controllers started, waited
on and read. The fixtures (`remote`, `start`) are in conftest.py."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.state.db import URL_SCHEMES, open_db
from tests.support import commit, git, http_service

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
    """Deployment `web`: service hello on machine m1 (at address()), answering `message`."""
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
        "hello/bin/hello": http_service(repr(message), str(delay)),
    }


def answer(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as r:
        return str(r.read().decode())


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


def read_state(db: str, sql: str) -> list[dict[str, Any]]:
    """Rows of the state DB `db` (a file, or a PostgreSQL URL with its password) while a
    controller writes it; none before it exists."""
    if db.startswith(URL_SCHEMES):
        state = open_db(db, write=False)
        if state is None:
            return []
        try:
            return list(state.query(sql))
        finally:
            state.close()
    if not Path(db).exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float,
    logs: Sequence[Path],
    running: Sequence[subprocess.Popen[str]] = (),
) -> Any:
    """What `check` returns once it is true (an error reading counts as not yet), within
    `timeout` seconds and while each of `running` runs; else fails with the logs' ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in running:
            assert proc.poll() is None, _ends(logs)
        try:
            got = check()
        except (OSError, ValueError, LookupError, sqlite3.Error):
            got = None
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{_ends(logs)}")


def _ends(logs: Sequence[Path]) -> str:
    return "\n".join(log.read_text()[-5000:] for log in logs)


@dataclass
class Controller:
    """A `reconciler run` a test started (the `start` fixture)."""

    proc: subprocess.Popen[str]
    log: Path  # its stderr
    port: int  # its --listen port on 127.0.0.1
    state: tuple[str, ...]  # the options naming its state, for the CLI commands after it
    db: str  # the state as the test reads it: its file, or its URL with the password
    env: dict[str, str]  # what its environment adds to clean_env()

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
        return wait_for(what, check, timeout, [self.log], [self.proc])

    def query(self, sql: str) -> list[dict[str, Any]]:
        return read_state(self.db, sql)

    def conditions(self) -> dict[str, dict[str, Any]]:
        """Deployment web's conditions, by type."""
        [row] = self.query("SELECT conditions FROM deployments WHERE name = 'web'")
        return {c["type"]: c for c in json.loads(row["conditions"])}

    def endpoint(self) -> str:
        """Where hello@m1 of deployment web answers."""
        [row] = self.query("SELECT value FROM allocations WHERE key = 'port/web/hello@m1'")
        return f"http://{address()}:{row['value']}/"

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; its exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)
