"""Several processes opening a fresh PostgreSQL state at once (replicas starting
together): one migrates it, the others wait and use it; none fails."""

from __future__ import annotations

import subprocess
import sys

from reconciler.state.db import current_version, open_db
from tests.postgres import Database

OPEN = "from reconciler.state.db import open_db; import sys; open_db(sys.argv[1], write=True)"


def test_replicas_starting_together_migrate_once(postgres_db: Database) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN, postgres_db.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    db = open_db(postgres_db.url, write=False)
    assert db is not None
    numbers = [r["number"] for r in db.query("SELECT number FROM migrations ORDER BY number")]
    db.close()
    assert numbers == list(range(1, current_version() + 1))  # each applied once


def test_a_process_opening_the_state_again_reuses_its_connection(postgres_db: Database) -> None:
    """A controller opens the state several times per deployment and pass: each opening
    must not cost the server a new backend (and both sides a SCRAM exchange)."""
    backends = set()
    for _ in range(5):
        db = open_db(postgres_db.url, write=True)
        assert db is not None
        backends.add(next(db.query("SELECT pg_backend_pid() AS pid"))["pid"])
        db.close()
    assert len(backends) == 1


def test_a_kept_connection_the_server_dropped_is_replaced(postgres_db: Database) -> None:
    db = open_db(postgres_db.url, write=True)
    assert db is not None
    first = next(db.query("SELECT pg_backend_pid() AS pid"))["pid"]
    db.close()
    postgres_db.server.admin(f"SELECT pg_terminate_backend({first})")
    db = open_db(postgres_db.url, write=True)
    assert db is not None
    assert next(db.query("SELECT pg_backend_pid() AS pid"))["pid"] != first
    db.close()
