"""Credentials in a repository URL (user:password@, `?token=`) never reach a message or
a log line: git's own errors quote the URL (with a `/` after the query, so a plain
search-and-replace of the URL misses it), and every path that reports them redacts.
Tried against real git on loopback: a server that answers 404, and a closed port."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.controller.git import GitError, branch_head, default_branch
from reconciler.models.source import redact
from tests.support import free_port, run_cli

SECRET = "glpat-S3cr3tT0ken"


class NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def answers_404() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def urls(port: int) -> list[str]:
    base = f"127.0.0.1:{port}/org/models.git"
    return [
        f"http://{base}?private_token={SECRET}",
        f"http://{base}?ref=main&token={SECRET}",
        f"http://oauth2:{SECRET}@{base}",
        f"http://{SECRET}@{base}",
    ]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://bob:pw@git.example/r.git", "https://git.example/r.git"),
        ("https://git.example/r.git?token=abc&x=1", "https://git.example/r.git?token=***&x=***"),
        ("https://git.example/r.git?abc", "https://git.example/r.git?***"),
        (
            "fatal: unable to access 'http://h/m.git?token=abc/': Failed to connect",
            "fatal: unable to access 'http://h/m.git?token=***': Failed to connect",
        ),
        ("ssh://git@git.example/r.git", "ssh://git.example/r.git"),
        ("git@git.example:org/r.git", "git@git.example:org/r.git"),  # no secret in scp form
        ("/srv/models?odd name", "/srv/models?odd name"),  # a path, not a URL
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_git_errors_never_show_credentials(answers_404: int) -> None:
    for port in (answers_404, free_port()):
        for url in urls(port):
            for ask in (branch_head(url, "main"), default_branch(url)):
                with pytest.raises(GitError) as failed:
                    asyncio.run(ask)
                message = str(failed.value)
                assert SECRET not in message, message
                assert f"127.0.0.1:{port}/org/models.git" in message  # still says where


@pytest.mark.slow
def test_commands_never_show_credentials(answers_404: int, tmp_path: Path) -> None:
    """What people see: validate fetching the models, and the controller's first look."""
    for url in urls(answers_404)[::2]:
        for args in (("validate",), ("--state", str(tmp_path / "state.db"), "run", "--once")):
            done = run_cli("--repo", url, *args, cwd=tmp_path)
            assert done.returncode == 1, done.stderr
            assert SECRET not in done.stdout + done.stderr
            assert "Traceback" not in done.stderr
            assert "127.0.0.1" in done.stderr, done.stderr
