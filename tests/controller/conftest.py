"""Fixtures of the tests of `reconciler run`: a Git remote (git daemon on loopback) holding
hello_files("v1"), and controllers started on it and, after the test, stopped and their
deployments destroyed."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.controller.support import Controller, Remote, hello_files, next_address, read_state
from tests.support import RECONCILER, clean_env, free_port, git, make_repo, run_cli


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
        work = make_repo(tmp_path / "work", hello_files("v1"), programs=["hello/bin/hello"])
        git(work, "remote", "add", "origin", url)
        git(work, "push", "-q", "origin", "main")
        yield Remote(url, work)
    finally:
        daemon.terminate()
        daemon.wait()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Controller]]:
    """start(repo, *run options, state=, options=, db=, env=): `reconciler --repo REPO
    --state STATE OPTIONS… run --listen 127.0.0.1:PORT RUN…` (STATE: a file of this
    test's own unless given; `db`: how the test reads it, when that is not STATE)."""
    started: list[Controller] = []

    def launch(
        repo: str,
        *run: str,
        state: str | None = None,
        options: Sequence[str] = (),
        db: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Controller:
        state = state or str(tmp_path / "controller" / "state.db")
        log, port = tmp_path / f"controller{len(started) or ''}.log", free_port()
        argv = ("--state", state, *options)
        proc = subprocess.Popen(
            [RECONCILER, "--repo", repo, *argv, "run", "--listen", f"127.0.0.1:{port}", *run],
            env=clean_env(**(env or {})),
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
            text=True,
        )
        started.append(Controller(proc, log, port, argv, db or state, dict(env or {})))
        return started[-1]

    yield launch
    for c in started:
        if c.proc.poll() is None:
            c.proc.send_signal(signal.SIGTERM)
    for c in started:
        try:
            c.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()
    for c in {c.db: c for c in started}.values():  # one per state: replicas share theirs
        for row in read_state(c.db, "SELECT name FROM deployments"):
            done = run_cli(*c.state, "-d", row["name"], "destroy", "--yes", cwd=tmp_path, env=c.env)
            assert done.returncode == 0, done.stderr
