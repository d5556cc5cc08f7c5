"""Host keys trusted on first use, recorded in the state DB; and how each recorded machine
was reached (what a connection made before the models are read can go by)."""

from __future__ import annotations

import json
from typing import Any

from reconciler.state.db import StateDB, now, transaction


class RecordedHostKeys:
    def __init__(self, db: StateDB) -> None:
        self.db = db

    def recorded(self, host: str, port: int) -> str | None:
        row = next(
            self.db.query("SELECT key FROM host_keys WHERE host = ? AND port = ?", [host, port]),
            None,
        )
        return str(row["key"]) if row else None

    def record(self, host: str, port: int, key: str) -> None:
        with transaction(self.db):
            self.db.execute(
                "INSERT INTO host_keys (host, port, key, first_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [host, port, key, now()],
            )


def recorded_connections(db: StateDB, deployment: str) -> dict[str, dict[str, Any]]:
    """machine → its connection as last recorded (`DesiredMachine.connection`)."""
    return {
        r["name"]: json.loads(r["connection"] or "{}")
        for r in db.query(
            "SELECT name, connection FROM machines WHERE deployment = ? ORDER BY name",
            [deployment],
        )
    }
