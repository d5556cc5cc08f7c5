"""A real PostgreSQL server for the tests (SPEC §11): Debian's `postgresql` binaries, a
cluster made by `initdb` in a temporary folder and started by `pg_ctl`, listening on a
Unix socket in that folder (no password: the tests' own connections) and on a loopback
port (password required: what the CLI is given). Started once per session; each test gets
a database of its own. As root, the server runs as the `postgres` user (or `nobody`),
which owns the folder; the tests skip where PostgreSQL is not installed.

A test that takes `state_location` runs on both backends: a SQLite file, and a database
of its own on this server."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.support import free_port

USER = "reconciler"
PASSWORD = "s3cret-pg-Passw0rd"  # distinctive, so a test can look for it in any output


@dataclass(frozen=True)
class Server:
    folder: Path  # the socket is here
    port: int

    def url(self, database: str, password: str | None = None) -> str:
        """A URL over the loopback port; without `password` it must come from elsewhere."""
        auth = USER if password is None else f"{USER}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """A statement run as the superuser over the socket (outside any transaction)."""
        with psycopg.connect(
            host=str(self.folder), port=self.port, user=USER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql)


def _binaries() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version)
    return Path(versions[-1]).parent if versions else None


def _version(path: str) -> int:
    part = Path(path).parts[-3]
    return int(part) if part.isdigit() else 0


def _as_owner(folder: Path) -> list[str]:
    """The command prefix that runs the server's programs as an unprivileged user (root
    may not run PostgreSQL), after giving that user the folder."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        return ["runuser", "-u", name, "--"]
    pytest.skip("no unprivileged user to run PostgreSQL as")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Server]:
    bin_dir = _binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (scripts/install-system-deps installs it)")
    folder = Path(tempfile.mkdtemp(prefix="rc-pg-"))
    folder.chmod(0o755)
    (folder / "pwfile").write_text(PASSWORD + "\n")
    prefix = _as_owner(folder)
    data = folder / "data"
    subprocess.run(
        [
            *prefix,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            USER,
            "-E",
            "UTF8",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={folder / 'pwfile'}",
        ],
        check=True,
        capture_output=True,
    )
    (folder / "pwfile").unlink()
    server = None
    for _ in range(5):  # another session may take the port between our look and its bind
        port = free_port()
        options = (
            f"-k {folder} -h 127.0.0.1 -p {port} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        started = subprocess.run(
            [
                *prefix,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(folder / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            capture_output=True,
            text=True,
        )
        if started.returncode == 0:
            server = Server(folder, port)
            break
    if server is None:
        log = (folder / "log").read_text() if (folder / "log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{log}")
    try:
        yield server
    finally:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class Database:
    server: Server
    name: str

    @property
    def url(self) -> str:
        """With the password in it: for the library; the CLI tests pass it otherwise."""
        return self.server.url(self.name, PASSWORD)


@pytest.fixture(params=["sqlite", "postgresql"])
def state_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a state DB is (or will be): a file path, or a postgresql:// URL."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    db: Database = request.getfixturevalue("postgres_db")
    return db.url


@pytest.fixture
def postgres_db(postgres_server: Server) -> Iterator[Database]:
    """An empty database of this test's own on the session's server."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    postgres_server.admin(f"CREATE DATABASE {name}")
    try:
        yield Database(postgres_server, name)
    finally:
        postgres_server.admin(f"DROP DATABASE {name} WITH (FORCE)")
