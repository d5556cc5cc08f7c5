"""Every command on the PostgreSQL state as on SQLite (SPEC §11): example-repo deployed to
local machines by the real CLI, once with a SQLite file and once with `--state
postgresql://…` (the local store and machines under $RECONCILER_HOME), and `plan`,
`apply`, `status`, `history`, `check`, `rollback`, `gc` and `destroy` say the same. The
password never shows."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.apply.test_status_history import GEOLOCATION, commit_program, example  # noqa: F401
from tests.postgres import PASSWORD, Database
from tests.support import git, kill_instances, run_cli

pytestmark = pytest.mark.slow

# what differs between two runs whatever the state: times, ids, process ids, and the bytes
# a transfer put on the wire (its batching, not the record)
VOLATILE = {"time", "attempt", "id", "startedAt", "finishedAt", "lastTransitionTime", "pid"}
VOLATILE |= {"transferredBytes"}


def cli(repo: Path, env: Mapping[str, str], *args: str, code: int = 0) -> str:
    done = run_cli(*args, cwd=repo, env=env, timeout=180)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == code, (done.stdout, done.stderr)
    assert PASSWORD not in done.stdout + done.stderr
    return done.stdout


def cli_json(repo: Path, env: Mapping[str, str], *args: str, code: int = 0) -> Any:
    return json.loads(cli(repo, env, *args, "--format", "json", code=code))


def steady(value: Any, root: Path) -> Any:
    """`value` without what differs from run to run: times, ids, the state's own folder."""
    if isinstance(value, dict):
        return {k: steady(v, root) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [steady(v, root) for v in value]
    if isinstance(value, str):
        return re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z?", "<time>", value.replace(str(root), "<root>"))
    return value


def deploy_and_take_down(repo: Path, env: Mapping[str, str], root: Path) -> dict[str, Any]:
    """plan, apply two commits, status, history, plan again, check, rollback, gc, destroy:
    what each said."""
    first, second = git(repo, "rev-parse", "HEAD~1"), git(repo, "rev-parse", "HEAD")
    said: dict[str, Any] = {"status before": cli_json(repo, env, "status")}
    said["plan"] = cli_json(repo, env, "-d", "local", "--ref", first, "plan")
    said["apply 1"] = cli_json(repo, env, "-d", "local", "--ref", first, "apply", "--yes")
    said["status 1"] = cli_json(repo, env, "status")
    said["apply 2"] = cli_json(repo, env, "-d", "local", "--ref", second, "apply", "--yes")
    said["history"] = cli_json(repo, env, "history")
    said["history text"] = [line.split()[0] for line in cli(repo, env, "history").splitlines()]
    said["plan again"] = cli_json(repo, env, "-d", "local", "--ref", second, "plan")
    said["check"] = cli(repo, env, "check")
    said["rollback"] = cli(repo, env, "-d", "local", "rollback", "--to", "1", "--yes")
    said["gc"] = cli(repo, env, "-d", "local", "gc", "--keep", "1", "--min-age", "0s")
    said["history after"] = cli_json(repo, env, "history")
    said["destroy"] = cli(repo, env, "-d", "local", "destroy", "--yes")
    said["status after"] = cli_json(repo, env, "-d", "local", "status")
    return steady(said, root)


@pytest.fixture
def two_commits(example: Path) -> Iterator[Path]:  # noqa: F811
    program = (example / GEOLOCATION).read_text()
    commit_program(example, program + "\n# a harmless change\n", "touch geolocation")
    yield example


def machine_pids(root: Path) -> list[int]:
    return [
        json.loads(p.read_text())["pid"]
        for p in root.glob("machines/*/deployments/*/instances/*/pid.json")
    ]


def test_every_command_says_the_same_on_postgresql_as_on_sqlite(
    two_commits: Path, postgres_db: Database, tmp_path: Path
) -> None:
    repo = two_commits
    on_sqlite = tmp_path / "sqlite"
    on_postgres = tmp_path / "pg"
    secret = tmp_path / "pg-password"
    secret.write_text(PASSWORD + "\n")
    url = postgres_db.server.url(postgres_db.name)  # no password in it
    try:
        sqlite_said = deploy_and_take_down(
            repo, {"RECONCILER_STATE": str(on_sqlite / "state.db")}, on_sqlite
        )
        postgres_said = deploy_and_take_down(
            repo,
            {
                "RECONCILER_STATE": url,
                "RECONCILER_HOME": str(on_postgres),
                "RECONCILER_STATE_PASSWORD_FILE": str(secret),
            },
            on_postgres,
        )
    finally:
        for root in (on_sqlite, on_postgres):
            for pid in machine_pids(root):
                subprocess.run(["kill", "-9", f"-{pid}"], capture_output=True)
        kill_instances(repo)
    for what, said in sqlite_said.items():
        assert postgres_said[what] == said, what
    # and it was a real deployment, kept where $RECONCILER_HOME says
    assert postgres_said["apply 1"]["generation"] == 1
    assert postgres_said["apply 2"]["generation"] == 2
    assert [h["generation"] for h in postgres_said["history"]] == [2, 1]
    assert postgres_said["status 1"]["generation"]["number"] == 1
    assert {i["state"] for i in postgres_said["status 1"]["instances"]} == {"active"}
    assert "9 instances taken down" in postgres_said["destroy"]
    assert (on_postgres / "store").is_dir() and (on_postgres / "machines").is_dir()
    assert not (on_postgres / "state.db").exists()


def test_the_password_is_never_printed(two_commits: Path, postgres_db: Database) -> None:
    repo = two_commits
    url = postgres_db.server.url(postgres_db.name, PASSWORD)  # in the URL itself
    env = {"RECONCILER_HOME": str(repo / ".reconciler")}
    try:
        cli(repo, env, "--state", url, "-d", "local", "-vv", "apply", "--yes")
        for command in (["status"], ["history"], ["check"], ["-d", "local", "plan"]):
            cli(repo, env, "--state", url, "-vv", *command)
        # refused and failed commands name the state without it
        wrong = postgres_db.server.url(postgres_db.name, "wrong-" + PASSWORD)
        missing = postgres_db.server.url("no_such_database", PASSWORD)
        for state in (wrong, missing, "postgresql://u:" + PASSWORD + "@127.0.0.1:1/x"):
            done = run_cli("--state", state, "status", cwd=repo, env=env)
            assert done.returncode == 1
            assert "Traceback" not in done.stderr
            assert PASSWORD not in done.stdout + done.stderr
            assert ":***@" in done.stderr and len(done.stderr.strip().splitlines()) == 1
        cli(repo, env, "--state", url, "-d", "local", "destroy", "--yes")
    finally:
        kill_instances(repo)
