"""The history document of a deployment (`history --format json`, the API): its
generations and failed attempts, newest first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler.state.db import open_db
from reconciler.state.rows import AttemptRow, change_summary, read_deployment, reading


def history_rows(state: Path, name: str) -> list[dict[str, Any]]:
    """What `history --format json` prints for one deployment (the controller's API)."""
    db = open_db(state, write=False) if state.exists() else None
    with reading(state):
        record = read_deployment(db, name) if db is not None else None
    return [attempt_json(a) for a in record.attempts] if record else []


def attempt_json(a: AttemptRow) -> dict[str, Any]:
    return {
        "generation": a.generation,
        "time": a.time,
        "commit": a.commit,
        "author": a.author,
        "email": a.email,
        "subject": a.subject,
        "commitTime": a.commit_time,
        "result": a.status,
        "reason": a.reason,
        "changes": change_summary(a.summary),
        "summary": a.summary,
        "attempt": a.id,
        "startedAt": a.started_at,
        "finishedAt": a.finished_at,
    }
