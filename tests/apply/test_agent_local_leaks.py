"""On a `local` machine the agent runs beside the controller, as its user: a package link
that leads to a file only the controller has must not be followed, and the file's content
must reach neither the error, the state DB nor the history (issue 13). And `destroy`
returns only once the processes it stops have exited."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support import commit, make_repo, run_cli

pytestmark = pytest.mark.slow

SECRET = "ControllerOnlySecret4711"  # SQLite would quote it: near "…": syntax error


def database_models(tmp_path: Path, secret: Path) -> Path:
    files = {
        "reconciler.yaml": "deployments:\n  db:\n    models: [models.yaml]\n",
        "models.yaml": (
            "machines:\n"
            "  m1: {deployment: {targetEnv: local, address: 127.0.0.1}}\n"
            "packages:\n  staff-db: {src: packages/staff-db}\n"
            "services:\n  staff-db: {package: staff-db, type: sqlite-database}\n"
            "distribution:\n  staff-db: [m1]\n"
        ),
        "packages/staff-db/README": "the staff database\n",
    }
    repo = make_repo(tmp_path / "models", files)
    os.symlink(secret, repo / "packages/staff-db/schema.sql")
    commit(repo, {}, "a schema that is a link to the controller's secret")
    return repo


def test_a_link_to_a_controller_file_does_not_leak(tmp_path: Path) -> None:
    secret = tmp_path / "secret.sql"
    secret.write_text(f"{SECRET} is the password\n")
    repo = database_models(tmp_path, secret)
    failed = run_cli("apply", "--yes", cwd=repo, timeout=120)
    assert failed.returncode == 1
    assert "staff-db@m1: schema.sql is a symbolic link that leads out of its package" in (
        failed.stderr
    )
    history = run_cli("history", "--format", "json", cwd=repo, timeout=60)
    assert history.returncode == 0, history.stderr
    assert "schema.sql is a symbolic link" in history.stdout
    state_db = repo / ".reconciler/state.db"
    for seen in (
        failed.stdout,
        failed.stderr,
        history.stdout,
        state_db.read_bytes().decode("utf-8", "replace"),
    ):
        assert SECRET not in seen
    assert not list(repo.glob(".reconciler/machines/m1/deployments/db/state/staff-db/*"))


SLOW_TO_STOP = """#!/bin/sh
trap 'sleep 2; echo stopped > "$RECONCILER_STATE/stopped"; exit 0' TERM
while :; do sleep 0.1; done
"""


def test_destroy_returns_once_the_processes_have_exited(tmp_path: Path) -> None:
    files = {
        "reconciler.yaml": "deployments:\n  slow:\n    models: [models.yaml]\n",
        "models.yaml": (
            "machines:\n"
            "  m1: {deployment: {targetEnv: local, address: 127.0.0.1}}\n"
            "packages:\n  slow: {src: packages/slow}\n"
            "services:\n  slow: {package: slow, type: process, command: bin/slow}\n"
            "distribution:\n  slow: [m1]\n"
        ),
        "packages/slow/bin/slow": SLOW_TO_STOP,
    }
    repo = make_repo(tmp_path / "models", files, programs=["packages/slow/bin/slow"])
    done = run_cli("apply", "--yes", cwd=repo, timeout=120)
    assert done.returncode == 0, done.stderr
    instance = repo / ".reconciler/machines/m1/deployments/slow"
    pid = json.loads((instance / "instances/slow/pid.json").read_text())["pid"]

    gone = run_cli("destroy", "--yes", "-d", "slow", cwd=repo, timeout=120)
    assert gone.returncode == 0, gone.stderr
    assert (instance / "state/slow/stopped").read_text() == "stopped\n"
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return
    assert stat.rsplit(")", 1)[1].split()[0] in "ZX"  # exited (a zombie until reaped)
