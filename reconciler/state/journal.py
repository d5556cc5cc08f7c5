"""The write-ahead journal of an attempt: each step is recorded before it is taken and
marked when it ends, so an interrupted attempt can be settled from the record."""

from __future__ import annotations

import json
from typing import Any

import sqlite_utils

from reconciler.state.db import transaction
from reconciler.state.record import now


class Journal:
    def __init__(self, db: sqlite_utils.Database, attempt: str) -> None:
        self.db, self.attempt = db, attempt

    def begin(self, step: str, target: str | None, action: str, **detail: Any) -> int:
        with transaction(self.db):
            cursor = self.db.execute(
                "INSERT INTO journal (attempt_id, step, target, action, status, detail, at) "
                "VALUES (?, ?, ?, ?, 'started', ?, ?)",
                [self.attempt, step, target, action, json.dumps(detail), now()],
            )
        return int(cursor.lastrowid or 0)

    def end(self, entry: int, status: str = "done", **detail: Any) -> None:
        with transaction(self.db):
            self.db.execute(
                "UPDATE journal SET status = ?, detail = json_patch(detail, ?), at = ? "
                "WHERE id = ?",
                [status, json.dumps(detail), now(), entry],
            )
