"""Opening the state DB: created 0600, WAL, migrated only by writers and after a backup.

A command that only reads never migrates the file: it reads an in-memory migrated copy.
A binary older than the file's schema refuses it rather than guess.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import sqlite_utils

from reconciler.errors import UserError
from reconciler.state.migrations import MIGRATIONS


def current_version() -> int:
    return len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def open_db(path: Path, write: bool) -> sqlite_utils.Database | None:
    """The state DB at `path`; None when a reader finds no file (nothing recorded yet)."""
    if not path.exists():
        if not write:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        os.close(fd)
    old_umask = os.umask(0o077)  # the -wal and -shm files sqlite creates stay private too
    try:
        return _open(path, write)
    except sqlite3.DatabaseError as e:
        raise UserError(f"{path}: not a usable reconciler state DB ({e})") from None
    finally:
        os.umask(old_umask)


def _open(path: Path, write: bool) -> sqlite_utils.Database:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    version = schema_version(conn)
    if version > current_version():
        conn.close()
        raise UserError(
            f"{path}: written by a newer reconciler (schema {version}, this one knows "
            f"{current_version()}); upgrade reconciler to use it"
        )
    if version < current_version():
        if write:
            _migrate_file(conn, path, version)
        else:
            conn = _migrated_copy(conn, version)
    if write:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return sqlite_utils.Database(conn)


def _migrate_file(conn: sqlite3.Connection, path: Path, version: int) -> None:
    if version > 0:
        _refuse_if_in_flight(conn, path)
        backup = path.with_name(f"{path.name}.v{version}.bak")
        fd = os.open(backup, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        os.close(fd)
        with sqlite3.connect(backup) as dest:
            conn.backup(dest)
    _apply(conn, version)


def _migrated_copy(conn: sqlite3.Connection, version: int) -> sqlite3.Connection:
    memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.backup(memory)
    conn.close()
    _apply(memory, version)
    return memory


def _apply(conn: sqlite3.Connection, version: int) -> None:
    for number, (name, statements) in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO migrations (number, name, applied_at) "
                "VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                (number, name),
            )
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _refuse_if_in_flight(conn: sqlite3.Connection, path: Path) -> None:
    running = conn.execute("SELECT count(*) FROM attempts WHERE status = 'running'").fetchone()[0]
    if running:
        raise UserError(
            f"{path}: an attempt is still in flight; settle it with the reconciler version that "
            "started it before upgrading the state DB"
        )
