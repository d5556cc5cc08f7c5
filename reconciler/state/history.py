"""Read-only queries over the state DB for `status`, `history` and `check`: what was
applied and attempted, the recorded machines and instances as the targets should show
them. Pure reads; nothing here writes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from reconciler.errors import UserError


@dataclass(frozen=True)
class AttemptRow:
    """One attempt: a generation when it succeeded, else a failed (or running) attempt."""

    id: str
    generation: int | None
    commit: str | None
    author: str | None
    email: str | None
    subject: str | None
    commit_time: str | None
    started_at: str
    finished_at: str | None
    status: str  # running | succeeded | failed | rolled_back | stalled
    reason: str | None
    summary: dict[str, int] | None  # the plan's summary, when the plan was stored

    @property
    def time(self) -> str:
        return self.finished_at or self.started_at


@dataclass(frozen=True)
class MachineRow:
    name: str
    target_env: str
    address: str | None
    state_dir: str | None
    connection: dict[str, Any]
    provider_id: str | None = None  # provisioned machines: EC2 instance, container netns
    provider_state: str | None = None


@dataclass(frozen=True)
class InstanceRow:
    key: str
    service: str
    machine: str
    type: str
    identity: str
    package_path: str
    port: int | None
    generation: int | None
    request: dict[str, Any] | None  # the activation request it runs with, if recorded


@dataclass(frozen=True)
class DeploymentRecord:
    name: str
    last_applied_sha: str | None
    last_attempted_sha: str | None
    attempts: list[AttemptRow]  # newest first
    machines: list[MachineRow]  # by name
    instances: list[InstanceRow]  # by key
    paths: dict[str, dict[str, str]] = field(default_factory=dict)  # machine → path → hash
    conditions: list[dict[str, Any]] = field(default_factory=list)  # as the controller left them

    @property
    def generation(self) -> AttemptRow | None:
        """The last applied generation."""
        done = [a for a in self.attempts if a.generation is not None]
        return max(done, key=lambda a: a.generation or 0) if done else None

    @property
    def last_attempt(self) -> AttemptRow | None:
        return self.attempts[0] if self.attempts else None


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """SQLite errors while reading (a damaged or foreign file) become one clear error."""
    try:
        yield
    except sqlite3.Error as e:
        raise UserError(f"{path}: cannot read the state DB: {e}") from None


def recorded_deployments(db: sqlite_utils.Database) -> list[str]:
    return [r["name"] for r in db.query("SELECT name FROM deployments ORDER BY name")]


def pick_recorded(db: sqlite_utils.Database | None, wanted: str | None) -> str | None:
    """The deployment to show: -d NAME as given, else the only one recorded; None when
    nothing is recorded (and no -d)."""
    if wanted is not None:
        return wanted
    names = recorded_deployments(db) if db is not None else []
    if len(names) > 1:
        raise UserError(
            f"the state DB records {len(names)} deployments ({', '.join(names)}): "
            "choose one with -d NAME"
        )
    return names[0] if names else None


def read_deployment(db: sqlite_utils.Database, name: str) -> DeploymentRecord | None:
    """Everything recorded about one deployment; None when it is not recorded."""
    row = next(db.query("SELECT * FROM deployments WHERE name = ?", [name]), None)
    if row is None:
        return None
    attempts = [
        _attempt(r)
        for r in db.query(
            "SELECT * FROM attempts WHERE deployment = ? ORDER BY started_at DESC, rowid DESC",
            [name],
        )
    ]
    machines = [
        MachineRow(
            name=r["name"],
            target_env=r["target_env"],
            address=r["address"],
            state_dir=r["state_dir"],
            connection=_object(r["connection"]),
            provider_id=r["provider_id"],
            provider_state=r["provider_state"],
        )
        for r in db.query("SELECT * FROM machines WHERE deployment = ? ORDER BY name", [name])
    ]
    instances = [
        InstanceRow(
            key=r["key"],
            service=r["service"],
            machine=r["machine"],
            type=r["type"],
            identity=r["identity"],
            package_path=r["package_path"],
            port=r["port"],
            generation=r["generation"],
            request=_object(r["request"]) or None,
        )
        for r in db.query("SELECT * FROM instances WHERE deployment = ? ORDER BY key", [name])
    ]
    paths: dict[str, dict[str, str]] = {}
    for r in db.query(
        "SELECT machine, path, content_hash FROM machine_paths WHERE deployment = ?", [name]
    ):
        paths.setdefault(r["machine"], {})[r["path"]] = r["content_hash"]
    return DeploymentRecord(
        name=name,
        last_applied_sha=row["last_applied_sha"],
        last_attempted_sha=row["last_attempted_sha"],
        attempts=attempts,
        machines=machines,
        instances=instances,
        paths=paths,
        conditions=_conditions(row["conditions"]),
    )


def _conditions(raw: str | None) -> list[dict[str, Any]]:
    try:
        value = json.loads(raw or "[]")
    except ValueError:
        return []
    return [c for c in value if isinstance(c, dict)] if isinstance(value, list) else []


def change_summary(summary: dict[str, int] | None) -> str | None:
    """'+activated ~replaced -deactivated' instances, from a plan's summary."""
    if not summary:
        return None
    return (
        f"+{summary.get('toActivate', 0)} ~{summary.get('toReplace', 0)} "
        f"-{summary.get('toDeactivate', 0)}"
    )


def _attempt(r: dict[str, Any]) -> AttemptRow:
    summary = _object(r["plan"]).get("summary") or _object(r["summary"]) or None
    return AttemptRow(
        id=r["id"],
        generation=r["generation"],
        commit=r["commit_sha"],
        author=r["author"],
        email=r["email"],
        subject=r["subject"],
        commit_time=r["commit_time"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        status=r["status"],
        reason=r["reason"],
        summary=summary if isinstance(summary, dict) else None,
    )


def _object(text: str | None) -> dict[str, Any]:
    """A JSON object column; {} when NULL, 'null' or not an object."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
