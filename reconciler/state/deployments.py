"""Writing what the controller and `rollback` keep per deployment: its conditions with
their transition times, and whether auto-apply is paused."""

from __future__ import annotations

import json
from typing import Any

from reconciler.state.db import StateDB, now, transaction
from reconciler.state.rows import deployment_row


def store_conditions(
    db: StateDB, name: str, computed: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Store the conditions; each keeps its last transition time while its status stays."""
    out = []
    with transaction(db):
        row = deployment_row(db, name)
        before = {c.get("type"): c for c in (row.conditions if row else [])}
        for c in computed:
            old = before.get(c["type"]) or {}
            same = old.get("status") == c["status"]
            out.append(
                {**c, "lastTransitionTime": (same and old.get("lastTransitionTime")) or now()}
            )
        db.execute(
            "INSERT INTO deployments (name, created_at, conditions) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET conditions = excluded.conditions",
            [name, now(), json.dumps(out)],
        )
    return out


def pause(db: StateDB, name: str, sha: str | None) -> None:
    """Auto-apply pauses at this branch head (after a rollback); a new generation resumes it."""
    with transaction(db):
        db.execute("UPDATE deployments SET paused_at_sha = ? WHERE name = ?", [sha, name])


def store_status(db: StateDB, name: str, doc: dict[str, Any]) -> None:
    """The owner's status document, for the replicas that do not own the deployment."""
    with transaction(db):
        db.execute(
            "INSERT INTO deployments (name, created_at, status_doc) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET status_doc = excluded.status_doc",
            [name, now(), json.dumps(doc)],
        )


def stored_status(db: StateDB, name: str) -> dict[str, Any] | None:
    row = next(db.query("SELECT status_doc FROM deployments WHERE name = ?", [name]), None)
    if row is None or not row["status_doc"]:
        return None
    doc = json.loads(row["status_doc"])
    return doc if isinstance(doc, dict) else None
