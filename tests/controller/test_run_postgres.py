"""`reconciler run` on a PostgreSQL state (SPEC §11): the controller and the applies it
starts find the password in the file `--state-password-file` names (the URL has none),
deploy the branch head and then each new commit, store the conditions in the database,
and exit 0 on SIGTERM; nothing it logs holds the password."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.controller.support import Controller, Remote, answer, hello_files
from tests.postgres import PASSWORD, Database

pytestmark = pytest.mark.slow


def test_the_controller_deploys_each_commit_on_a_postgresql_state(
    remote: Remote,
    postgres_db: Database,
    start: Callable[..., Controller],
    tmp_path: Path,
) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    home = tmp_path / "home"
    c = start(
        remote.url,
        state=postgres_db.server.url(postgres_db.name),  # no password in it
        options=["--state-password-file", str(secret)],
        db=postgres_db.url,
        env={"RECONCILER_HOME": str(home)},
    )
    c.wait("v1 to serve", lambda: answer(c.endpoint()) == "v1", timeout=90)
    c.wait("Ready", lambda: c.conditions()["Ready"]["status"] == "True", timeout=90)
    remote.push(hello_files("v2"), "hello v2")
    c.wait("v2 to serve", lambda: answer(c.endpoint()) == "v2", timeout=90)
    # v2 answers before its apply records generation 2
    c.wait("generation 2", lambda: c.query("SELECT 1 FROM attempts WHERE generation = 2"))
    generations = c.query("SELECT generation FROM attempts WHERE generation IS NOT NULL")
    assert sorted(r["generation"] for r in generations) == [1, 2]
    assert list(home.glob("machines/m1/deployments/web/instances/hello/pid.json"))
    assert c.stop() == 0
    assert PASSWORD not in c.log.read_text()
