"""The state DB: private, WAL, migrated only by writers after a backup, never downgraded."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from reconciler.errors import UserError
from reconciler.plan.diff import make_plan
from reconciler.state import db as dbmod
from reconciler.state.db import current_version, exclusive, open_db, transaction
from reconciler.state.attempts import record_generation, start_attempt
from reconciler.state.rows import read_recorded
from tests.helpers import chain_model, compiled


def test_a_reader_finds_nothing_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    assert open_db(path, write=False) is None
    assert not path.exists()


def test_a_writer_creates_a_private_wal_database_at_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.db"
    db = open_db(path, write=True)
    assert db is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == current_version()
    db.execute("CREATE TABLE t (x)")  # writes make the -wal file appear
    for extra in path.parent.glob("state.db-*"):
        assert stat.S_IMODE(extra.stat().st_mode) & 0o077 == 0, extra


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    open_db(path, write=True)
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {current_version() + 1}")
    for write in (False, True):
        with pytest.raises(UserError, match="written by a newer reconciler"):
            open_db(path, write=write)


def test_readers_never_migrate_and_writers_back_up_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    open_db(path, write=True)
    upgraded = [*dbmod.MIGRATIONS, ("add-notes", ["CREATE TABLE notes (text TEXT)"])]
    monkeypatch.setattr(dbmod, "MIGRATIONS", upgraded)

    reader = open_db(path, write=False)
    assert reader is not None and "notes" in reader.table_names()  # a migrated copy
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(upgraded) - 1

    writer = open_db(path, write=True)
    assert writer is not None and "notes" in writer.table_names()
    backup = tmp_path / f"state.db.v{len(upgraded) - 1}.bak"
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    with sqlite3.connect(backup) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(upgraded) - 1


def test_migration_is_refused_while_an_attempt_is_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    db = open_db(path, write=True)
    assert db is not None
    db.execute("INSERT INTO deployments (name, created_at) VALUES ('d', 'now')")
    db.execute(
        "INSERT INTO attempts (id, deployment, started_at, status) "
        "VALUES ('a1', 'd', 'now', 'running')"
    )
    db.conn.close()
    monkeypatch.setattr(dbmod, "MIGRATIONS", [*dbmod.MIGRATIONS, ("x", ["SELECT 1"])])
    with pytest.raises(UserError, match="in flight"):
        open_db(path, write=True)


def test_a_recorded_generation_plans_as_no_change(tmp_path: Path) -> None:
    desired = compiled(chain_model(length=3))
    db = open_db(tmp_path / "state.db", write=True)
    assert db is not None
    present = {m: dict.fromkeys(desired.machines[m].closure, "h") for m in desired.machines}
    number = record_generation(db, start_attempt(db, desired, {}), desired, present, {})
    assert number == 1
    recorded = read_recorded(db, desired.deployment)
    assert recorded.generation == 1
    again = compiled(chain_model(length=3), allocations=recorded.allocations)
    plan = make_plan(again, recorded)
    assert not plan.has_changes
    assert {c.action for c in plan.instances} == {"keep"}
    assert record_generation(db, start_attempt(db, again, {}), again, present, {}) == 2


def test_recorded_allocations_survive_and_keep_ports(tmp_path: Path) -> None:
    desired = compiled(chain_model(length=2, machines=1))
    db = open_db(tmp_path / "state.db", write=True)
    assert db is not None
    record_generation(db, start_attempt(db, desired, {}), desired, {}, {})
    recorded = read_recorded(db, desired.deployment)
    assert recorded.allocations["local-address/test/m0"] == "127.0.0.10"
    assert {k for k in recorded.allocations if k.startswith("port/")} == {
        "port/test/s0@m0",
        "port/test/s1@m0",
    }


def test_a_failed_write_leaves_no_trace(tmp_path: Path) -> None:
    db = open_db(tmp_path / "state.db", write=True)
    assert db is not None
    with pytest.raises(RuntimeError), transaction(db):
        db.execute("INSERT INTO deployments (name, created_at) VALUES ('d', 'now')")
        raise RuntimeError("disk full")
    assert db.execute("SELECT count(*) FROM deployments").fetchone()[0] == 0


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    busy = pytest.raises(UserError, match=r"in use by apply \(pid \d+\)")
    with exclusive(path, "apply"), busy, exclusive(path, "gc"):
        pass
    with exclusive(path, "gc"):  # released: free again
        pass
