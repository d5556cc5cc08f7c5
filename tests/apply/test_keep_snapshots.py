"""Kept snapshots (SPEC §10 `failover: {stateful: latest-snapshot}`) on local machines:
the controller's copy of a database's latest snapshot holds what was written, replaces
the one before, is checked before it is restored, and an apply with the database's
machine failed restores it on the other machine."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.execute.agent_client import AgentError
from reconciler.execute.keep_snapshots import forget_unwanted, keep_snapshots, read_kept
from reconciler.state.db import StateDB, open_db
from reconciler.state.machines import note_reachability
from reconciler.state.rows import read_deployment
from reconciler.state.snapshots import kept_snapshots, snapshots_wanted
from tests.support import make_repo, run_cli

MODELS = """\
machines:
  m1: {deployment: {targetEnv: local}}
  m2: {deployment: {targetEnv: local}}
packages:
  db: {src: pkgs/db}
services:
  db: {package: db, type: sqlite-database}
distribution:
  db: {replicas: 1}
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = make_repo(
        tmp_path / "models",
        {
            "reconciler.yaml": "deployments:\n  d:\n    models: [app.yaml]\n"
            "    failover: {after: 60s, stateful: latest-snapshot}\n",
            "app.yaml": MODELS,
            "pkgs/db/schema.sql": "CREATE TABLE notes (note TEXT NOT NULL);\n",
        },
    )
    assert run_cli("apply", "--yes", cwd=path).returncode == 0
    return path


@pytest.fixture
def db(repo: Path) -> Iterator[StateDB]:
    state = open_db(repo / ".reconciler/state.db", write=True)
    assert state is not None
    try:
        yield state
    finally:
        state.close()


def database(repo: Path, machine: str) -> Path:
    return repo / f".reconciler/machines/{machine}/deployments/d/state/db/db.sqlite"


def notes(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT note FROM notes")]
    finally:
        conn.close()


def write(path: Path, note: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("INSERT INTO notes VALUES (?)", [note])
        conn.commit()
    finally:
        conn.close()


def keep(db: StateDB, repo: Path, keys: list[str]) -> list[str]:
    record = read_deployment(db, "d")
    assert record is not None
    return asyncio.run(keep_snapshots(db, record, keys, repo / ".reconciler"))


def test_the_kept_copy_holds_what_was_written_and_only_the_latest_is_kept(
    repo: Path, db: StateDB
) -> None:
    (key,) = snapshots_wanted(db, "d")
    machine = key.split("@")[1]
    write(database(repo, machine), "first")
    assert keep(db, repo, [key]) == []
    first = kept_snapshots(db, "d")[key]
    assert notes(Path(first.path)) == ["first"]
    assert Path(first.path).stat().st_mode & 0o777 == 0o600
    # the machine's own copy is not left behind
    assert not list((repo / f".reconciler/machines/{machine}/deployments/d/snapshots").iterdir())

    write(database(repo, machine), "second")
    assert keep(db, repo, [key]) == []
    latest = kept_snapshots(db, "d")[key]
    assert list(Path(latest.path).parent.iterdir()) == [Path(latest.path)]
    assert notes(Path(latest.path)) == ["first", "second"]
    assert read_kept(machine, latest) == Path(latest.path).read_bytes()

    Path(latest.path).write_bytes(b"not what was kept")
    with pytest.raises(AgentError, match="changed since it was kept"):
        read_kept(machine, latest)

    # no longer wanted: kept while its machine is failed (it may still be restored from)
    forget_unwanted(db, "d", kept_snapshots(db, "d"), wanted=[], failed=[machine])
    assert list(kept_snapshots(db, "d")) == [key]
    forget_unwanted(db, "d", kept_snapshots(db, "d"), wanted=[], failed=[])
    assert kept_snapshots(db, "d") == {}
    assert not Path(latest.path).exists()


def test_an_apply_with_the_machine_failed_restores_the_kept_copy_elsewhere(
    repo: Path, db: StateDB
) -> None:
    (key,) = snapshots_wanted(db, "d")
    source = key.split("@")[1]
    target = "m2" if source == "m1" else "m1"
    write(database(repo, source), "kept")
    assert keep(db, repo, [key]) == []
    write(database(repo, source), "after the snapshot")  # lost with the machine
    note_reachability(db, "d", {source: False}, 0.0, gone_since={source: 0.0})

    plan = run_cli("plan", cwd=repo).stdout
    assert "restored from the snapshot of " in plan
    out = run_cli("apply", "--yes", cwd=repo)
    assert out.returncode == 0, out.stderr
    assert f"db@{target}: restored from the snapshot of " in out.stderr
    assert notes(database(repo, target)) == ["kept"]
    assert snapshots_wanted(db, "d") == [f"db@{target}"]
