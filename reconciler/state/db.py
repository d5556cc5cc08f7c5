"""Opening the state DB: a SQLite file (created 0600, WAL) or a PostgreSQL database
(`postgres.py`), both migrated by the same named migrations, only by writers, never while
an attempt is in flight; a binary older than the schema refuses it rather than guess.

A command that only reads never migrates: with SQLite it reads an in-memory migrated
copy; with PostgreSQL, the migrations run in a transaction of its own session that is
never committed (it holds their locks until the reader closes: upgrade the controller
first). Before migrating, SQLite's file is copied beside it; a PostgreSQL migration is one
transaction per step, so a failed one leaves nothing, and backups of the server are the
operator's (`pg_dump` before upgrading).

`StateDB` is all the rest of `state/` asks of a connection: named queries elsewhere in
this folder are written against it in portable SQL with `?` parameters.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import sys
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, Protocol

from reconciler.errors import UserError
from reconciler.state import migrations

URL_SCHEMES = ("postgresql://", "postgres://")


class StateDB(Protocol):
    """A connection to the state: rows as dicts, statements with `?` parameters."""

    dialect: str  # "sqlite" or "postgresql": which statement a migration runs where they differ

    def query(self, sql: str, params: Sequence[Any] = ...) -> Iterator[dict[str, Any]]: ...

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...

    def begin(self) -> None:
        """A write transaction; one writer at a time (see `transaction`)."""

    def schema_version(self) -> int:
        """How many migrations are applied."""

    def set_schema_version(self, number: int) -> None: ...

    def close(self) -> None: ...


class SqliteDB:
    """sqlite3 in autocommit mode (`transaction` groups writes), rows as dicts. Only this
    much of sqlite-utils was used, and importing it was a sixth of each command's start."""

    dialect = "sqlite"
    label = ""  # the file, for messages

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # A page found damaged, or a write refused, mid-command: said in words (_in_words)
    def execute(
        self, sql: str, parameters: Sequence[Any] | dict[str, Any] | None = None
    ) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, () if parameters is None else parameters)
        except sqlite3.DatabaseError as e:
            raise _in_words(self.label, e) from None

    def query(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
    ) -> Generator[dict[str, Any], None, None]:
        cursor = self.execute(sql, params)  # runs the statement now, not when first read
        return self._rows(cursor)

    def _rows(self, cursor: sqlite3.Cursor) -> Generator[dict[str, Any], None, None]:
        keys = [d[0] for d in cursor.description or ()]
        try:
            for row in cursor:
                yield dict(zip(keys, row, strict=True))
        except sqlite3.DatabaseError as e:
            raise _in_words(self.label, e) from None

    def close(self) -> None:
        self.conn.close()

    def begin(self) -> None:
        self.execute("BEGIN IMMEDIATE")

    def schema_version(self) -> int:
        version: int = self.execute("PRAGMA user_version").fetchone()[0]
        return version

    def set_schema_version(self, number: int) -> None:
        self.execute(f"PRAGMA user_version = {int(number)}")


def now() -> str:
    """The time stamps of the state: UTC, milliseconds, sortable as text."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def execute_many(db: StateDB, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    for row in rows:
        db.execute(sql, row)


def database_errors() -> tuple[type[Exception], ...]:
    """What a backend raises for a failed statement (psycopg's only once it is loaded)."""
    psycopg = sys.modules.get("psycopg")
    return (sqlite3.Error,) if psycopg is None else (sqlite3.Error, psycopg.Error)


def one_line(error: Exception) -> str:
    """A database's message on one line (libpq puts hints and context on lines of their
    own)."""
    return re.sub(r"\s*\n\s*", "; ", str(error).strip()) or type(error).__name__


def current_version() -> int:
    return len(migrations.MIGRATIONS)


def open_db(location: str | Path, write: bool) -> StateDB | None:
    """The state DB at `location` (a file, or a `postgresql://` URL); None when a reader
    finds nothing recorded yet (no file, an empty database)."""
    if isinstance(location, str) and location.startswith(URL_SCHEMES):
        return _open_postgres(location, write)
    path = Path(location)
    if not path.exists() and not write:
        return None
    if not path.exists() or path.stat().st_size == 0:
        # being created: sqlite makes the file empty and fills it at the first migration;
        # creators take turns, so an empty file seen under the lock is truly empty
        with _creating(path):
            if path.is_file() and path.stat().st_size == 0:
                raise UserError(
                    f"{path}: the state DB is empty (0 bytes): its history and pinned host "
                    f"keys are gone, and starting afresh would forget them; {_restore(path)}"
                )
            return _open_file(path, write)
    return _open_file(path, write)


@contextmanager
def _creating(path: Path) -> Iterator[None]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(f"{path.name}.init"), os.O_CREAT | os.O_RDWR, 0o600)
    except OSError:  # a read-only folder: nobody can be creating the file there
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open_file(path: Path, write: bool) -> StateDB | None:
    if not path.exists() and not write:
        return None
    if write:
        _refuse_unwritable(path)
    old_umask = os.umask(0o077)  # the file and the -wal and -shm files sqlite makes: private
    try:
        if write:
            # sqlite creates the file (0600 under this umask); opening and closing a
            # descriptor of our own here would drop the POSIX locks every other
            # connection of this process holds on it, and let writers corrupt it
            path.parent.mkdir(parents=True, exist_ok=True)
        return _open(path, write)
    except sqlite3.DatabaseError as e:
        if isinstance(problem := _in_words(str(path), e), UserError):
            raise problem from None
        raise UserError(f"{path}: not a usable reconciler state DB ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot open the state DB: {e.strerror or e}") from None
    finally:
        os.umask(old_umask)


@contextmanager
def transaction(db: StateDB) -> Iterator[None]:
    """All or nothing: the connection runs in autocommit mode, so group writes here. One
    writer at a time per state: what a transaction read is still so when it commits."""
    db.begin()
    try:
        yield
    except BaseException:
        _roll_back(db)
        raise
    db.execute("COMMIT")


def _roll_back(db: StateDB) -> None:
    """What went wrong is the error to see, not that the rollback failed too (the server
    went away; SQLite already rolled back)."""
    with suppress(Exception):
        db.execute("ROLLBACK")


@contextmanager
def exclusive(path: Path, what: str, suffix: str = "lock") -> Iterator[None]:
    """One writer per state DB at a time (an flock beside it, released even on kill -9);
    `suffix` names another such lock (the controller's: one controller per state DB)."""
    lock_path = path.with_name(f"{path.name}.{suffix}")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as e:
        raise UserError(
            f"{lock_path}: cannot take the {what}'s lock: {e.strerror or e}; make "
            f"{lock_path.parent} writable for this user"
        ) from None
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


def _open(path: Path, write: bool) -> SqliteDB:
    # readers get a read-only connection: a command that only looks can never write
    where = str(path) if write else f"file:{path.resolve()}?mode=ro"
    if not write and not os.access(path.parent, os.W_OK) and not _has_wal(path):
        # SQLite cannot make the -shm file a WAL reader needs; no writer can either, so
        # the file cannot change while we read it
        where += "&immutable=1"
    conn = sqlite3.connect(
        where, timeout=30, isolation_level=None, check_same_thread=False, uri=not write
    )
    conn.execute("PRAGMA busy_timeout = 30000")
    db = SqliteDB(conn)
    db.label = str(path)
    version = db.schema_version()
    if version > current_version():
        conn.close()
        _refuse_newer(str(path), version)
    if version < current_version():
        if write:
            if version > 0:
                _refuse_if_in_flight(db, str(path))
                _back_up(conn, path, version)
            _apply(db, version)
        else:
            db = _migrated_copy(conn, version)
            db.label = str(path)
    if write:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")
    return db


def _open_postgres(url: str, write: bool) -> StateDB | None:
    from reconciler.state.postgres import connect  # psycopg only for a PostgreSQL state

    db = connect(url, write)
    version = db.schema_version()
    if version > current_version():
        db.close()
        _refuse_newer(db.label, version)
    if version < current_version():
        if not write and version == 0:  # nothing was ever recorded here
            db.close()
            return None
        if write:
            if version > 0:
                _refuse_if_in_flight(db, db.label)
            _apply(db, version)
        else:
            db.begin_view()
            version = db.schema_version()  # a writer may have migrated it meanwhile
            if version == current_version():
                db.execute("ROLLBACK")
                return db
            for statement in _statements(version, db.dialect):
                db.execute(statement)
            db.execute("SET TRANSACTION READ ONLY")
    return db


def _back_up(conn: sqlite3.Connection, path: Path, version: int) -> None:
    backup = path.with_name(f"{path.name}.v{version}.bak")
    fd = os.open(backup, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    os.close(fd)
    with sqlite3.connect(backup) as dest:
        conn.backup(dest)


def _migrated_copy(conn: sqlite3.Connection, version: int) -> SqliteDB:
    memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.backup(memory)
    conn.close()
    db = SqliteDB(memory)
    _apply(db, version)
    return db


# SQLite's primary result codes for a file that is no state DB any more, and for one that
# cannot be written here
_DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_UNWRITABLE = {sqlite3.SQLITE_READONLY}


def _in_words(label: str, error: sqlite3.DatabaseError) -> Exception:
    """A damaged or unwritable SQLite file as a UserError saying what to do; any other
    error as it is."""
    code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
    if code in _DAMAGED:
        return UserError(f"{label}: the state DB is damaged ({error}); {_restore(Path(label))}")
    if code in _UNWRITABLE:
        why = _why_unwritable(Path(label), str(error))
        return UserError(f"{label}: cannot write the state DB: {why}")
    return error


def _restore(path: Path) -> str:
    """What to do about a lost state DB: its newest backup, else a rebuild."""
    backups = sorted(path.parent.glob(f"{path.name}.v*.bak"), key=lambda p: p.stat().st_mtime)
    backup = backups[-1].name if backups else f"{path.name}.vN.bak, if there is one"
    return (
        f"restore a backup ({backup}) or move the file aside and rebuild the record from the "
        "machines with `reconciler reconstruct`"
    )


def _refuse_unwritable(path: Path) -> None:
    """A writer says why it cannot write before it starts, not after changing machines."""
    if path.exists() and not (os.access(path, os.W_OK) and _wal_possible(path)):
        raise UserError(f"{path}: cannot write the state DB: {_why_unwritable(path, '')}")


def _wal_possible(path: Path) -> bool:
    """Whether SQLite can use (or make) the -wal and -shm files beside the DB."""
    if os.access(path.parent, os.W_OK):
        return True
    beside = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    return all(os.access(p, os.W_OK) for p in beside)


def _has_wal(path: Path) -> bool:
    """Whether writes wait in the -wal file, not yet in the DB file itself."""
    wal = path.with_name(path.name + "-wal")
    return wal.exists() and wal.stat().st_size > 0


def _why_unwritable(path: Path, refusal: str) -> str:
    if path.exists() and not os.access(path, os.W_OK):
        what = "the file is read-only or immutable (see ls -l and lsattr)"
    elif not _wal_possible(path):
        what = f"its folder {path.parent} is read-only"
    else:
        what = refusal or "the file system refused to write"
    return f"{what}; make it writable for this user (status, history and plan need only read it)"


def _statements(version: int, dialect: str) -> Iterator[str]:
    """The statements of the migrations after `version`, as `dialect` runs them."""
    for _, statements in migrations.MIGRATIONS[version:]:
        yield from (migrations.for_dialect(s, dialect) for s in statements)


def _apply(db: StateDB, version: int) -> None:
    for number, (name, statements) in enumerate(migrations.MIGRATIONS[version:], start=version + 1):
        db.begin()
        if db.schema_version() >= number:  # another process migrated meanwhile
            db.execute("ROLLBACK")
            continue
        try:
            for statement in statements:
                db.execute(migrations.for_dialect(statement, db.dialect))
            db.execute(
                "INSERT INTO migrations (number, name, applied_at) VALUES (?, ?, ?)",
                [number, name, now()],
            )
            db.set_schema_version(number)
            db.execute("COMMIT")
        except BaseException:
            _roll_back(db)
            raise


def _refuse_newer(label: str, version: int) -> NoReturn:
    raise UserError(
        f"{label}: written by a newer reconciler (schema {version}, this one knows "
        f"{current_version()}); upgrade reconciler to use it"
    )


def _refuse_if_in_flight(db: StateDB, label: str) -> None:
    row = next(db.query("SELECT count(*) AS n FROM attempts WHERE status = 'running'"))
    if row["n"]:
        raise UserError(
            f"{label}: an attempt is still in flight; settle it with the reconciler version "
            "that started it before upgrading the state DB"
        )
