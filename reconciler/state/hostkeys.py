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


def recorded_connections(db: StateDB, deployment: str | None) -> dict[str, dict[str, Any]]:
    """machine → its connection as last recorded (`DesiredMachine.connection`), of
    `deployment`; None: of the one deployment the state has machines of (a repository of
    one deployment needs no -d), else none."""
    where, params = ("WHERE deployment = ?", [deployment]) if deployment else ("", [])
    rows = list(db.query(f"SELECT deployment, name, connection FROM machines {where}", params))
    if len({r["deployment"] for r in rows}) != 1:
        return {}
    return {r["name"]: json.loads(r["connection"] or "{}") for r in rows}
