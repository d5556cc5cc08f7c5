"""Opening the state DB: created 0600, WAL, migrated only by writers and after a backup.

A command that only reads never migrates the file: it reads an in-memory migrated copy.
A binary older than the file's schema refuses it rather than guess.

`StateDB` is all the rest of `state/` asks of a connection: named queries elsewhere in
this folder are written against it in portable SQL, so another backend is one more
module that opens a connection with these few methods.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import sqlite_utils

from reconciler.errors import UserError
from reconciler.state.migrations import MIGRATIONS


class StateDB(Protocol):
    """A connection to the state: rows as dicts, statements with `?` parameters."""

    def query(self, sql: str, params: Sequence[Any] = ...) -> Iterator[dict[str, Any]]: ...

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...

    def close(self) -> None: ...


def now() -> str:
    """The time stamps of the state: UTC, milliseconds, sortable as text."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def execute_many(db: StateDB, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    for row in rows:
        db.execute(sql, row)


def current_version() -> int:
    return len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def open_db(location: str | Path, write: bool) -> StateDB | None:
    """The state DB at `location`; None when a reader finds no file (nothing recorded
    yet)."""
    path = Path(location)
    if not path.exists() and not write:
        return None
    old_umask = os.umask(0o077)  # the file and the -wal and -shm files sqlite makes: private
    try:
        if write:
            # sqlite creates the file (0600 under this umask); opening and closing a
            # descriptor of our own here would drop the POSIX locks every other
            # connection of this process holds on it, and let writers corrupt it
            path.parent.mkdir(parents=True, exist_ok=True)
        return _open(path, write)
    except sqlite3.DatabaseError as e:
        raise UserError(f"{path}: not a usable reconciler state DB ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot open the state DB: {e.strerror or e}") from None
    finally:
        os.umask(old_umask)


@contextmanager
def transaction(db: StateDB) -> Iterator[None]:
    """All or nothing: the connection runs in autocommit mode, so group writes here."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@contextmanager
def exclusive(path: Path, what: str, suffix: str = "lock") -> Iterator[None]:
    """One writer per state DB at a time (an flock beside it, released even on kill -9);
    `suffix` names another such lock (the controller's: one controller per state DB)."""
    lock_path = path.with_name(f"{path.name}.{suffix}")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise UserError(
                f"{path} is in use by {holder}; wait for it to finish (one {what} per state "
                "DB at a time)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        os.close(fd)


def _open(path: Path, write: bool) -> sqlite_utils.Database:
    # readers get a read-only connection: a command that only looks can never write
    where = str(path) if write else f"file:{path.resolve()}?mode=ro"
    conn = sqlite3.connect(
        where, timeout=30, isolation_level=None, check_same_thread=False, uri=not write
    )
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
        if schema_version(conn) >= number:  # another process migrated meanwhile
            conn.execute("ROLLBACK")
            continue
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
