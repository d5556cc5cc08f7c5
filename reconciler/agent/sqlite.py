"""Activation type `sqlite-database`: the database made from the package's `schema.sql`
if it does not exist, then the package's `migrations/NNN-*.sql` not yet applied, in
order. Deactivation keeps the data; snapshot and restore use SQLite's backup API."""

from __future__ import annotations

import os
import re
import sqlite3
import time
from typing import Any

from .files import fsync_dir, fsync_file, inside, read_package_text, remove, utc_stamp
from .layout import Deployment
from .processes import RunAs
from .request import Failure, Instance

MIGRATION = re.compile(r"^(\d+)-.*\.sql$")
MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS _reconciler_migrations(name TEXT PRIMARY KEY, applied_at TEXT)"
)


def migrations(package: str) -> list[str]:
    folder = inside(package, "migrations")
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        m = MIGRATION.match(name)
        if m and os.path.isfile(os.path.join(folder, name)):
            found.append((int(m.group(1)), name))
    return [name for _, name in sorted(found)]


def remove_db_files(path: str) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        remove(path + suffix)


def create_database(db: str, package: str, run_as: RunAs) -> None:
    """Build the database from schema.sql in a temporary file, then rename it into place:
    there is never a half-made database at `db`."""
    folder, base = os.path.split(db)
    for stale in os.listdir(folder):
        if stale.startswith(f".{base}.tmp-"):
            remove(os.path.join(folder, stale))
    schema = read_package_text(package, "schema.sql")
    tmp = os.path.join(folder, f".{base}.tmp-{os.getpid()}")
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.executescript(schema)
            if conn.in_transaction:
                conn.execute("COMMIT")
            conn.execute(MIGRATIONS_TABLE)
        finally:
            conn.close()
        fsync_file(tmp)
        run_as.chown(tmp)
        os.replace(tmp, db)
    except sqlite3.Error as e:
        raise Failure(f"schema.sql failed: {e}") from None
    finally:
        remove_db_files(tmp)
    fsync_dir(folder)


def apply_migrations(db: str, package: str) -> list[str]:
    applied: list[str] = []
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        conn.execute(MIGRATIONS_TABLE)
        done = {row[0] for row in conn.execute("SELECT name FROM _reconciler_migrations")}
        for name in migrations(package):
            if name in done:
                continue
            sql = read_package_text(package, f"migrations/{name}")
            try:
                conn.executescript("BEGIN;\n" + sql + "\n;")
                if not conn.in_transaction:
                    raise sqlite3.OperationalError("the migration ended its own transaction")
                conn.execute(
                    "INSERT INTO _reconciler_migrations(name, applied_at) VALUES (?, ?)",
                    (name, utc_stamp(time.time())),
                )
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise Failure(f"migration {name} failed: {e}", applied=applied) from None
            applied.append(name)
    except sqlite3.Error as e:
        raise Failure(f"{db}: {e}", applied=applied) from None
    finally:
        conn.close()
    return applied


def activate(dep: Deployment, inst: Instance, identity: str) -> dict[str, Any]:
    assert inst.package is not None
    state = dep.state(inst.service)
    os.makedirs(state, exist_ok=True)
    run_as = RunAs(inst.user, inst.key)
    run_as.chown(state)
    dep.write_config(inst, identity)
    db = dep.db(inst.service)
    try:
        if not os.path.exists(db):
            create_database(db, inst.package, run_as)
        return {"path": db, "applied": apply_migrations(db, inst.package)}
    except Failure as e:
        raise Failure(f"{inst.key}: {e.message}", e.log, **e.extra) from None


def deactivate(dep: Deployment, inst: Instance) -> dict[str, Any]:
    return {}  # the data stays until `gc --delete-state`


def status(dep: Deployment, inst: Instance) -> dict[str, Any]:
    identity = dep.recorded_config(inst.service).get("identity")
    return {
        "state": "active" if os.path.exists(dep.db(inst.service)) else "missing",
        "pid": None,
        "identity": identity if isinstance(identity, str) else None,
        "healthy": None,
    }


def copy(source: str, target_dir: str, target_name: str) -> str:
    """Copy the database `source` with the online backup API to a temporary file in
    `target_dir` (for the caller to rename into place as `target_name`); its path."""
    tmp = os.path.join(target_dir, f".{target_name}.tmp-{os.getpid()}")
    remove_db_files(tmp)
    try:
        src = sqlite3.connect(source, timeout=30)
        try:
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
        fsync_file(tmp)
        return tmp
    except sqlite3.Error as e:
        remove_db_files(tmp)
        raise Failure(f"copying {source}: {e}") from None
    except BaseException:
        remove_db_files(tmp)
        raise


def snapshot(dep: Deployment, service: str, inst: Instance | None, path: str) -> dict[str, Any]:
    db = dep.db(service)
    if not os.path.isfile(db):
        raise Failure(f"no database to snapshot: {db}")
    dep.ensure()
    folder, name = os.path.split(path + ".sqlite")
    tmp = copy(db, folder, name)
    os.replace(tmp, os.path.join(folder, name))
    fsync_dir(folder)
    return {"path": os.path.join(folder, name)}


def restore(dep: Deployment, service: str, inst: Instance | None, source: str) -> dict[str, Any]:
    state = dep.state(service)
    os.makedirs(state, exist_ok=True)
    db = dep.db(service)
    tmp = copy(source, state, os.path.basename(db))
    try:
        old = os.stat(db)
    except FileNotFoundError:
        old = None
    try:
        if old is not None:
            os.chmod(tmp, old.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.chown(tmp, old.st_uid, old.st_gid)
        # the old database's journal files must not be applied to the restored one
        for suffix in ("-journal", "-wal", "-shm"):
            remove(db + suffix)
        os.replace(tmp, db)
    except BaseException:
        remove_db_files(tmp)
        raise
    fsync_dir(state)
    return {"path": db}
