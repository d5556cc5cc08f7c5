"""The state DB on both backends: created at the current schema by a writer, migrated only
by writers and never while an attempt is in flight, never downgraded; a reader sees a
migrated view and changes nothing; writes are all or nothing, one writer at a time. And
what only SQLite has: a private WAL file, a backup before migrating, the flock."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from reconciler.errors import UserError
from reconciler.options import without_password
from reconciler.plan.diff import make_plan
from reconciler.state import migrations
from reconciler.state.attempts import record_generation, start_attempt
from reconciler.state.db import StateDB, current_version, exclusive, open_db, transaction
from reconciler.state.journal import Journal, entries
from reconciler.state.postgres import connect, placeholders
from reconciler.state.rows import read_recorded, reading, recorded_deployments
from tests.helpers import chain_model, compiled
from tests.postgres import PASSWORD, Database

NOTES = ("add-notes", ["CREATE TABLE notes (text TEXT)"])


def writer(state_location: str) -> StateDB:
    db = open_db(state_location, write=True)
    assert db is not None  # a writer always gets a database
    return db


def tables(db: StateDB) -> set[str]:
    sql = {
        "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
        "postgresql": "SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema()",
    }[db.dialect]
    return {r["name"] for r in db.query(sql)}


def count(db: StateDB, table: str) -> int:
    return int(next(db.query(f"SELECT count(*) AS n FROM {table}"))["n"])


def test_a_reader_finds_nothing_and_creates_nothing(state_location: str) -> None:
    assert open_db(state_location, write=False) is None
    if state_location.startswith("postgresql://"):
        assert tables(connect(state_location, write=False)) == set()
    else:
        assert not Path(state_location).exists()


def test_a_writer_creates_the_current_schema_with_its_named_migrations(state_location: str) -> None:
    db = writer(state_location)
    assert db.schema_version() == current_version()
    assert [r["name"] for r in db.query("SELECT name FROM migrations ORDER BY number")] == [
        name for name, _ in migrations.MIGRATIONS
    ]
    assert {"deployments", "attempts", "journal", "provisioning"} <= tables(db)
    again = writer(state_location)  # and opening it again changes nothing
    assert count(again, "migrations") == current_version()


def test_a_newer_schema_is_refused(state_location: str) -> None:
    db = writer(state_location)
    future = current_version() + 1
    db.execute("INSERT INTO migrations VALUES (?, 'future', 'now')", [future])
    db.set_schema_version(future)
    db.close()
    for write in (False, True):
        with pytest.raises(UserError, match="written by a newer reconciler"):
            open_db(state_location, write=write)


def test_readers_never_migrate_and_writers_do(
    state_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer(state_location).close()
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, NOTES])

    reader = open_db(state_location, write=False)
    assert reader is not None and "notes" in tables(reader)  # a migrated view
    reader.close()
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:-1])
    unchanged = writer(state_location)  # without the new migration, the old binary opens it still
    assert "notes" not in tables(unchanged)
    unchanged.close()

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, NOTES])
    upgraded = writer(state_location)
    assert "notes" in tables(upgraded)
    assert upgraded.schema_version() == current_version()
    assert next(upgraded.query("SELECT max(number) AS n FROM migrations"))["n"] == len(
        migrations.MIGRATIONS
    )


def test_a_reader_cannot_write(state_location: str) -> None:
    writer(state_location).close()
    reader = open_db(state_location, write=False)
    assert reader is not None
    with pytest.raises(Exception, match=r"read-only|readonly"):
        reader.execute("INSERT INTO deployments (name, created_at) VALUES ('d', 'now')")


def test_a_sqlite_writer_backs_up_the_file_before_migrating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    writer(str(path)).close()
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, NOTES])
    writer(str(path))
    backup = tmp_path / f"state.db.v{current_version() - 1}.bak"
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    with sqlite3.connect(backup) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == current_version() - 1


def test_migration_is_refused_while_an_attempt_is_in_flight(
    state_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = writer(state_location)
    db.execute("INSERT INTO deployments (name, created_at) VALUES ('d', 'now')")
    db.execute(
        "INSERT INTO attempts (id, deployment, started_at, status) "
        "VALUES ('a1', 'd', 'now', 'running')"
    )
    db.close()
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, NOTES])
    with pytest.raises(UserError, match="in flight"):
        open_db(state_location, write=True)


def test_a_failed_migration_leaves_the_schema_as_it_was(
    state_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer(state_location).close()
    broken = ("broken", ["CREATE TABLE half (x TEXT)", "CREATE TABLE deployments (x TEXT)"])
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, broken])
    with pytest.raises(Exception, match="already exists"):
        open_db(state_location, write=True)
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:-1])
    db = writer(state_location)
    assert "half" not in tables(db)
    assert db.schema_version() == current_version()


def test_a_recorded_generation_plans_as_no_change(state_location: str) -> None:
    desired = compiled(chain_model(length=3))
    db = writer(state_location)
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


def test_recorded_allocations_survive_and_keep_ports(state_location: str) -> None:
    desired = compiled(chain_model(length=2, machines=1))
    db = writer(state_location)
    record_generation(db, start_attempt(db, desired, {}), desired, {}, {})
    recorded = read_recorded(db, desired.deployment)
    assert recorded.allocations["local-address/test/m0"] == "127.0.0.10"
    assert {k for k in recorded.allocations if k.startswith("port/")} == {
        "port/test/s0@m0",
        "port/test/s1@m0",
    }


def test_the_journal_keeps_entries_in_the_order_written(state_location: str) -> None:
    desired = compiled(chain_model(length=1, machines=1))
    db = writer(state_location)
    attempt = start_attempt(db, desired, {})
    journal = Journal(db, attempt)
    first = journal.begin("transition", "m0", "activate", key="s0@m0")
    second = journal.begin("transition", "m0", "deactivate", key="old@m0")
    assert second > first
    journal.end(first, note="50% done?")  # a % and a ? in a value are values
    assert [
        (e["action"], e["status"], e["detail"]) for e in entries(db, attempt, "transition")
    ] == [
        ("activate", "done", {"key": "s0@m0", "note": "50% done?"}),
        ("deactivate", "started", {"key": "old@m0"}),
    ]


def test_a_failed_write_leaves_no_trace(state_location: str) -> None:
    db = writer(state_location)
    with pytest.raises(RuntimeError), transaction(db):
        db.execute("INSERT INTO deployments (name, created_at) VALUES ('d', 'now')")
        raise RuntimeError("disk full")
    assert count(db, "deployments") == 0


def test_writers_take_turns(state_location: str) -> None:
    """What a transaction read is still so when it commits: a second writer's transaction
    starts only after the first's ends (an allocation read-then-written is never taken
    twice)."""
    first, second = writer(state_location), writer(state_location)
    seen: list[int] = []

    def other() -> None:
        with transaction(second):
            seen.append(count(second, "deployments"))

    with transaction(first):
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.3)
        assert seen == []  # still waiting for us
        first.execute("INSERT INTO deployments (name, created_at) VALUES ('d', 'now')")
    thread.join(timeout=30)
    assert seen == [1]


def test_a_damaged_state_is_one_clear_error_for_readers(state_location: str) -> None:
    db = writer(state_location)
    db.execute("ALTER TABLE deployments RENAME TO something_else")
    reader = open_db(state_location, write=False)
    assert reader is not None
    damaged = pytest.raises(UserError, match=r"cannot read the state DB: .*deployments")
    with damaged as e, reading(without_password(state_location)):
        recorded_deployments(reader)
    assert "\n" not in str(e.value) and PASSWORD not in str(e.value)


def test_statements_keep_question_marks_and_percents_that_are_text() -> None:
    sql = "SELECT '?' AS q, 'it''s 100%' AS p, \"we?ird\" FROM t WHERE a = ? AND b LIKE ?"
    assert placeholders(sql) == (
        "SELECT '?' AS q, 'it''s 100%%' AS p, \"we?ird\" FROM t WHERE a = %s AND b LIKE %s"
    )


def test_a_new_sqlite_database_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.db"
    db = writer(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert next(db.query("PRAGMA journal_mode"))["journal_mode"] == "wal"
    db.execute("CREATE TABLE t (x)")  # writes make the -wal file appear
    for extra in path.parent.glob("state.db-*"):
        assert stat.S_IMODE(extra.stat().st_mode) & 0o077 == 0, extra


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    busy = pytest.raises(UserError, match=r"in use by apply \(pid \d+\)")
    with exclusive(path, "apply"), busy, exclusive(path, "gc"):
        pass
    with exclusive(path, "gc"):  # released: free again
        pass


# --- PostgreSQL: reaching the server, and its password ----------------------------------


def test_an_unreachable_server_is_one_line_naming_the_url_without_its_password() -> None:
    url = "postgresql://me:hunter2@127.0.0.1:1/state"
    with pytest.raises(UserError) as e:
        open_db(url, write=True)
    message = str(e.value)
    assert message.startswith("postgresql://me:***@127.0.0.1:1/state: cannot open the state DB")
    assert "Connection refused" in message
    assert "hunter2" not in message and "\n" not in message


def test_a_wrong_password_and_a_missing_database_are_one_line_errors(
    postgres_db: Database,
) -> None:
    server = postgres_db.server
    with pytest.raises(UserError) as wrong:
        open_db(server.url(postgres_db.name, "not-the-password"), write=False)
    assert "password authentication failed" in str(wrong.value)
    assert "not-the-password" not in str(wrong.value)
    with pytest.raises(UserError) as missing:
        open_db(server.url("no_such_db", PASSWORD), write=True)
    assert 'database "no_such_db" does not exist' in str(missing.value)
    assert str(missing.value).startswith(f"postgresql://reconciler:***@127.0.0.1:{server.port}/")
    for error in (wrong, missing):
        assert "\n" not in str(error.value)


def test_the_password_comes_from_the_password_file_when_the_url_has_none(
    postgres_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres_db.server.url(postgres_db.name)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    with pytest.raises(UserError, match="password"):
        open_db(url, write=True)
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    monkeypatch.setenv("RECONCILER_STATE_PASSWORD_FILE", str(secret))
    assert writer(url).schema_version() == current_version()
    monkeypatch.setenv("RECONCILER_STATE_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="cannot read the state password file"):
        open_db(url, write=True)


def test_a_server_gone_mid_transaction_is_one_line_and_records_nothing(
    postgres_db: Database,
) -> None:
    db = writer(postgres_db.url)
    with pytest.raises(UserError) as e, transaction(db):
        db.execute("INSERT INTO deployments (name, created_at) VALUES ('d', 'now')")
        postgres_db.server.admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{postgres_db.name}' AND pid <> pg_backend_pid()"
        )
        db.execute("INSERT INTO deployments (name, created_at) VALUES ('e', 'now')")
    assert str(e.value).startswith(
        f"postgresql://reconciler:***@127.0.0.1:{postgres_db.server.port}/"
    )
    assert "the state DB failed" in str(e.value) and "\n" not in str(e.value)
    assert count(writer(postgres_db.url), "deployments") == 0
