"""The write-ahead journal of an attempt: each step is recorded before it is taken and
marked when it ends, so an interrupted attempt can be settled from the record."""

from __future__ import annotations

import json
from typing import Any

from reconciler.state.db import StateDB, now, transaction


class Journal:
    def __init__(self, db: StateDB, attempt: str) -> None:
        self.db, self.attempt = db, attempt

    def begin(self, step: str, target: str | None, action: str, **detail: Any) -> int:
        with transaction(self.db):
            [row] = self.db.query(
                "INSERT INTO journal (attempt_id, step, target, action, status, detail, at) "
                "VALUES (?, ?, ?, ?, 'started', ?, ?) RETURNING id",
                [self.attempt, step, target, action, json.dumps(detail), now()],
            )
        return int(row["id"])

    def end(self, entry: int, status: str = "done", **detail: Any) -> None:
        with transaction(self.db):
            row = next(self.db.query("SELECT detail FROM journal WHERE id = ?", [entry]), None)
            merged = {**json.loads(row["detail"] if row else "{}"), **detail}
            self.db.execute(
                "UPDATE journal SET status = ?, detail = ?, at = ? WHERE id = ?",
                [status, json.dumps(merged), now(), entry],
            )


def entries(db: StateDB, attempt: str, step: str) -> list[dict[str, Any]]:
    """What an attempt wrote ahead for one step, oldest first, detail decoded."""
    return [
        {**r, "detail": json.loads(r["detail"])}
        for r in db.query(
            "SELECT step, target, action, status, detail FROM journal "
            "WHERE attempt_id = ? AND step = ? ORDER BY id",
            [attempt, step],
        )
    ]


def rollout_progress(db: StateDB, deployment: str) -> dict[str, dict[str, Any]]:
    """The running attempt's rollouts (SPEC §9), by service: the batch it is at, of how
    many, its instances and whether that batch is done; empty when none is running."""
    progress: dict[str, dict[str, Any]] = {}
    for r in db.query(
        "SELECT j.status, j.detail FROM journal j JOIN attempts a ON a.id = j.attempt_id "
        "WHERE a.deployment = ? AND a.status = 'running' AND j.action = 'rollout-batch' "
        "ORDER BY j.id",
        [deployment],
    ):
        d = json.loads(r["detail"])
        progress[d["service"]] = {
            "batch": d["batch"],
            "batches": d["batches"],
            "instances": d["instances"],
            "plan": d.get("plan") or [],
            "done": r["status"] == "done",
        }
    return progress
