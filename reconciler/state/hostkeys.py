"""Host keys trusted on first use, recorded in the state DB."""

from __future__ import annotations

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
