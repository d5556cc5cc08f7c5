"""The history document of a deployment (`history --format json`, the API): its
generations and failed attempts, newest first."""

from __future__ import annotations

from typing import Any

from reconciler.options import Options
from reconciler.state.db import open_db
from reconciler.state.rows import AttemptRow, change_summary, read_deployment, reading


def history_rows(opts: Options, name: str) -> list[dict[str, Any]]:
    """What `history --format json` prints for one deployment (the controller's API)."""
    db = open_db(opts.state_location, write=False)
    if db is None:
        return []
    try:
        with reading(opts.state_label):
            record = read_deployment(db, name)
    finally:
        db.close()
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
