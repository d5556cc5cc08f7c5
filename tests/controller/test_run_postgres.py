"""`reconciler run` on a PostgreSQL state (SPEC §11): the controller and the applies it
starts find the password in the file `--state-password-file` names (the URL has none),
deploy the branch head and then each new commit, store the conditions in the database,
and exit 0 on SIGTERM; nothing it logs holds the password."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.state.db import open_db
from tests.controller.test_run import (  # noqa: F401 (remote: a fixture)
    Remote,
    address,
    answer,
    free_port,
    hello_files,
    remote,
)
from tests.postgres import PASSWORD, Database
from tests.support import RECONCILER, clean_env, run_cli

pytestmark = pytest.mark.slow


def recorded(url: str, sql: str) -> list[dict[str, Any]]:
    db = open_db(url, write=False)
    if db is None:
        return []
    try:
        return list(db.query(sql))
    finally:
        db.close()


def test_the_controller_deploys_each_commit_on_a_postgresql_state(
    remote: Remote,  # noqa: F811
    postgres_db: Database,
    tmp_path: Path,
) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    url = postgres_db.server.url(postgres_db.name)  # no password in it
    home = tmp_path / "home"
    env = clean_env(RECONCILER_HOME=str(home))
    log = tmp_path / "controller.log"
    argv = ["--repo", remote.url, "--state", url, "--state-password-file", str(secret)]
    proc = subprocess.Popen(
        [RECONCILER, *argv, "run", "--listen", f"127.0.0.1:{free_port()}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        text=True,
    )

    def wait(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                got = check()
            except (OSError, ValueError, LookupError):
                got = None
            if got:
                return got
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}\n{log.read_text()}")

    def endpoint() -> str:
        [row] = recorded(
            postgres_db.url, "SELECT value FROM allocations WHERE key = 'port/web/hello@m1'"
        )
        return f"http://{address()}:{row['value']}/"

    def conditions() -> dict[str, dict[str, Any]]:
        [row] = recorded(postgres_db.url, "SELECT conditions FROM deployments WHERE name = 'web'")
        return {c["type"]: c for c in json.loads(row["conditions"])}

    try:
        wait("v1 to serve", lambda: answer(endpoint()) == "v1")
        wait("Ready", lambda: conditions()["Ready"]["status"] == "True")
        remote.push(hello_files("v2"), "hello v2")
        wait("v2 to serve", lambda: answer(endpoint()) == "v2")
        generations = recorded(
            postgres_db.url, "SELECT generation FROM attempts WHERE generation IS NOT NULL"
        )
        assert sorted(r["generation"] for r in generations) == [1, 2]
        assert list(home.glob("machines/m1/deployments/web/instances/hello/pid.json"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        done = run_cli(
            *argv, "-d", "web", "destroy", "--yes", cwd=tmp_path, env={"RECONCILER_HOME": str(home)}
        )
        assert done.returncode == 0, done.stderr
    assert PASSWORD not in log.read_text()
