"""The PostgreSQL state backend (SPEC §11): the `StateDB` methods over psycopg 3.

The named queries of `state/` are written once, with `?` parameters: they become `%s`
here (a `?` inside a quoted literal is text and stays). The connection runs in autocommit
mode with explicit transactions, as SQLite's does; a write transaction first takes one
advisory lock of the database, so writers take turns exactly as SQLite's `BEGIN
IMMEDIATE` makes them: a read-then-write transaction (an allocation, a lease) cannot be
interleaved with another. A reader's session is read-only.

The password comes from the URL, else the file `--state-password-file` names (passed on
as `$RECONCILER_STATE_PASSWORD_FILE`, so the controller's applies find it too), else
libpq's `PGPASSWORD` and `~/.pgpass`. It is never part of a message: errors name the URL
without it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import dict_row

from reconciler.errors import UserError
from reconciler.options import without_password
from reconciler.state.db import one_line

PASSWORD_FILE_ENV = "RECONCILER_STATE_PASSWORD_FILE"
# pg_advisory_xact_lock key of "a writer of the reconciler state" (any fixed number)
WRITERS = 0x7265636F6E63
# Connections a process keeps open for its next opening of the same state: each new one
# costs the server a backend and both sides a SCRAM exchange (10-60 ms on 2 cores), and a
# controller opens the state several times per deployment and pass.
IDLE_KEPT = 4
_idle: dict[tuple[str, bool], list[psycopg.Connection[dict[str, Any]]]] = {}


class PostgresDB:
    """A connection to the state in a PostgreSQL database: rows as dicts."""

    dialect = "postgresql"

    def __init__(
        self, conn: psycopg.Connection[dict[str, Any]], label: str, kept: tuple[str, bool]
    ) -> None:
        self.conn, self.label, self.kept = conn, label, kept

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        return iter(self.execute(sql, params).fetchall())

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[dict[str, Any]]:
        try:
            return self.conn.execute(placeholders(sql), tuple(params))
        except psycopg.OperationalError as e:  # the server went away, or refuses us
            raise UserError(f"{self.label}: the state DB failed: {one_line(e)}") from None

    def begin(self) -> None:
        """A write transaction, once the writers before it are done."""
        if self.conn.info.transaction_status != pq.TransactionStatus.IDLE:
            raise RuntimeError("a transaction is already open on this connection")
        self.execute("BEGIN")
        try:
            self.execute("SELECT pg_advisory_xact_lock(?)", [WRITERS])
        except BaseException:  # interrupted while waiting its turn: no transaction left open
            self.conn.execute("ROLLBACK")
            raise

    def begin_view(self) -> None:
        """A transaction never committed: what a reader sees of an older schema is the
        migrations run inside it, rolled back when it closes. It waits for a writer that
        is migrating the schema right now (the reader reads the version again after)."""
        self.execute("BEGIN READ WRITE")
        self.execute("SELECT pg_advisory_xact_lock(?)", [WRITERS])

    def schema_version(self) -> int:
        # a plain query of the catalog (not to_regclass, whose cached catalog snapshot can
        # miss a table another replica created just before our lock was granted)
        row = next(
            self.query(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables WHERE tablename = "
                "'migrations' AND schemaname = current_schema()) AS present"
            )
        )
        if not row["present"]:
            return 0
        return int(next(self.query("SELECT coalesce(max(number), 0) AS n FROM migrations"))["n"])

    def set_schema_version(self, number: int) -> None:
        """The `migrations` table is the record; nothing more to keep."""

    def close(self) -> None:
        """Kept for the next opening when it is sound and idle (else closed)."""
        idle = _idle.setdefault(self.kept, [])
        status = self.conn.info.transaction_status
        if self.conn.broken or status != pq.TransactionStatus.IDLE or len(idle) >= IDLE_KEPT:
            self.conn.close()
        else:
            idle.append(self.conn)


@lru_cache(maxsize=512)
def placeholders(sql: str) -> str:
    """`?` parameters as psycopg's `%s`, and `%` doubled (psycopg reads it as a marker);
    a `?` inside a quoted literal or identifier is left as it is."""
    parts = re.split(r"('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")", sql)
    return "".join(
        part.replace("%", "%%") if i % 2 else part.replace("%", "%%").replace("?", "%s")
        for i, part in enumerate(parts)  # odd: a quoted part
    )


def connect(url: str, write: bool) -> PostgresDB:
    """A connection to the database `url` names; a one-line error when the server cannot
    be reached, refuses the password or has no such database."""
    label = without_password(url)
    if (kept := _kept(url, write)) is not None:
        return PostgresDB(kept, label, (url, write))
    try:
        given = psycopg.conninfo.conninfo_to_dict(url)
        extra: dict[str, Any] = {"connect_timeout": given.get("connect_timeout") or 10}
        password = None if given.get("password") else _password_from_file(label)
        if password is not None:
            extra["password"] = password
        if not write:  # a command that only looks can never write
            extra["options"] = f"{given.get('options') or ''} -c default_transaction_read_only=on"
        conn = psycopg.connect(url, autocommit=True, row_factory=dict_row, **extra)
    except psycopg.Error as e:
        raise UserError(f"{label}: cannot open the state DB: {one_line(e)}") from None
    return PostgresDB(conn, label, (url, write))


def _kept(url: str, write: bool) -> psycopg.Connection[dict[str, Any]] | None:
    """An idle connection kept from an earlier opening that still answers."""
    idle = _idle.get((url, write), [])
    while True:
        try:
            conn = idle.pop()  # (threads share the list: pop, not test-then-pop)
        except IndexError:
            return None
        try:
            conn.execute("SELECT 1")
            return conn
        except psycopg.Error:  # the server restarted, or dropped it meanwhile
            conn.close()


def _password_from_file(label: str) -> str | None:
    name = os.environ.get(PASSWORD_FILE_ENV)
    if not name:
        return None
    try:
        return Path(name).read_text().strip("\r\n")
    except OSError as e:
        raise UserError(
            f"{name}: cannot read the state password file ({e.strerror or e}) for {label}"
        ) from None
