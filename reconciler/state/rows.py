"""The row model of the state: one dataclass per table, and every read of it.

Everything that reads the state DB goes through these functions; the planner's view
(`recorded.py`) and the status/history view (`DeploymentRecord`) are both built from
the same rows. Pure reads; nothing here writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.desired.state import DesiredInstance, DesiredMachine
from reconciler.errors import UserError
from reconciler.state.db import StateDB, database_errors, one_line
from reconciler.state.recorded import RecordedInstance, RecordedMachine, RecordedState
from reconciler.state.snapshots import kept_snapshots


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
    profile: tuple[str, ...] = ()
    provider: dict[str, Any] = field(default_factory=dict)
    location: str | None = None


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
    inputs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeploymentRow:
    name: str
    last_applied_sha: str | None
    last_attempted_sha: str | None
    paused_at_sha: str | None
    service_order: dict[str, tuple[str, ...]]
    conditions: list[dict[str, Any]]


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
    service_order: dict[str, tuple[str, ...]] = field(default_factory=dict)  # what needs what
    health: dict[str, MachineHealth] = field(default_factory=dict)  # failover's, by machine

    @property
    def generation(self) -> AttemptRow | None:
        """The last applied generation."""
        done = [a for a in self.attempts if a.generation is not None]
        return max(done, key=lambda a: a.generation or 0) if done else None

    @property
    def last_attempt(self) -> AttemptRow | None:
        return self.attempts[0] if self.attempts else None


@contextmanager
def reading(label: str | Path) -> Iterator[None]:
    """Database errors while reading (a damaged or foreign file or database) become one
    clear error."""
    try:
        yield
    except database_errors() as e:
        raise UserError(f"{label}: cannot read the state DB: {one_line(e)}") from None


# --- deployments ----------------------------------------------------------------------


def recorded_deployments(db: StateDB) -> list[str]:
    return [r["name"] for r in db.query("SELECT name FROM deployments ORDER BY name")]


def pick_recorded(db: StateDB | None, wanted: str | None) -> str | None:
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


def deployment_row(db: StateDB | None, name: str) -> DeploymentRow | None:
    row = (
        None
        if db is None
        else next(db.query("SELECT * FROM deployments WHERE name = ?", [name]), None)
    )
    if row is None:
        return None
    order = _object(row["service_order"])
    return DeploymentRow(
        name=row["name"],
        last_applied_sha=row["last_applied_sha"],
        last_attempted_sha=row["last_attempted_sha"],
        paused_at_sha=row["paused_at_sha"],
        service_order={k: tuple(v) for k, v in order.items()},
        conditions=_conditions(row["conditions"]),
    )


def record_versions(db: StateDB, name: str | None = None) -> dict[str, tuple[Any, ...]]:
    """Per recorded deployment (or only `name`), what changes whenever anything is
    recorded for it (an attempt, a rollback's pause, failover's view of a machine): how a
    controller knows whose record to read again, in three queries for all deployments."""
    where, args = ("WHERE name = ?", [name]) if name else ("", [])
    versions: dict[str, list[Any]] = {
        r["name"]: [r["last_applied_sha"], r["last_attempted_sha"], r["paused_at_sha"]]
        for r in db.query(
            "SELECT name, last_applied_sha, last_attempted_sha, paused_at_sha "
            f"FROM deployments {where}",
            args,
        )
    }
    where = "WHERE deployment = ?" if name else ""
    for r in db.query(
        "SELECT deployment, count(*) AS n, max(started_at) AS s, max(finished_at) AS f "
        f"FROM attempts {where} GROUP BY deployment",
        args,
    ):
        versions.get(r["deployment"], []).extend((r["n"], r["s"], r["f"]))
    for r in db.query(
        "SELECT deployment, machine, unreachable_since, failed_since FROM machine_health "
        f"{where} ORDER BY deployment, machine",
        args,
    ):
        versions.get(r["deployment"], []).extend(
            (r["machine"], r["unreachable_since"], r["failed_since"])
        )
    return {n: tuple(v) for n, v in versions.items()}


# --- attempts -------------------------------------------------------------------------


def attempt_rows(db: StateDB, deployment: str) -> list[AttemptRow]:
    """Newest first."""
    return [
        _attempt(r)
        for r in db.query(
            "SELECT * FROM attempts WHERE deployment = ? ORDER BY started_at DESC, rowid DESC",
            [deployment],
        )
    ]


def generations(db: StateDB, deployment: str) -> dict[int, str | None]:
    """Generation number → its commit, oldest first."""
    return {
        r["generation"]: r["commit_sha"]
        for r in db.query(
            "SELECT generation, commit_sha FROM attempts WHERE deployment = ? "
            "AND generation IS NOT NULL ORDER BY generation",
            [deployment],
        )
    }


def newest_generations(db: StateDB, deployment: str, keep: int) -> list[int]:
    return [
        r["generation"]
        for r in db.query(
            "SELECT generation FROM attempts WHERE deployment = ? AND generation IS NOT NULL "
            "ORDER BY generation DESC LIMIT ?",
            [deployment, keep],
        )
    ]


def generation_paths(db: StateDB) -> list[tuple[str, int, dict[str, list[str]] | None]]:
    """(deployment, generation, {machine: store paths}) of every generation; None for
    one recorded before generations listed their paths."""
    return [
        (
            r["deployment"],
            r["generation"],
            None if r["machine_paths"] is None else json.loads(r["machine_paths"]),
        )
        for r in db.query(
            "SELECT deployment, generation, machine_paths FROM attempts "
            "WHERE generation IS NOT NULL"
        )
    ]


def unsettled(db: StateDB, deployment: str) -> list[str]:
    """Attempts a killed process left running, or whose rollback stalled; oldest first."""
    return [
        r["id"]
        for r in db.query(
            "SELECT id FROM attempts WHERE deployment = ? AND status IN ('running', 'stalled') "
            "ORDER BY started_at",
            [deployment],
        )
    ]


# --- machines, instances, paths -------------------------------------------------------


def machine_rows(db: StateDB, deployment: str) -> list[MachineRow]:
    return [
        MachineRow(
            name=r["name"],
            target_env=r["target_env"],
            address=r["address"],
            state_dir=r["state_dir"],
            connection=_object(r["connection"]),
            provider_id=r["provider_id"],
            provider_state=r["provider_state"],
            profile=tuple(json.loads(r["profile"] or "[]")),
            provider=_object(r["provider"]),
            location=r["location"],
        )
        for r in db.query("SELECT * FROM machines WHERE deployment = ? ORDER BY name", [deployment])
    ]


def machines_at(db: StateDB, location: str | None) -> list[tuple[str, str]]:
    """(deployment, machine) of every recorded machine at one location."""
    return [
        (r["deployment"], r["name"])
        for r in db.query("SELECT deployment, name FROM machines WHERE location = ?", [location])
    ]


def instance_rows(db: StateDB, deployment: str) -> list[InstanceRow]:
    return [
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
            inputs=_object(r["inputs"]),
        )
        for r in db.query("SELECT * FROM instances WHERE deployment = ? ORDER BY key", [deployment])
    ]


def recorded_requests(db: StateDB, deployment: str) -> dict[str, Any]:
    """The activation requests the recorded instances run with (to re-activate them)."""
    return {i.key: i.request for i in instance_rows(db, deployment) if i.request is not None}


def machine_paths(db: StateDB, deployment: str) -> dict[str, dict[str, str]]:
    """machine → {store path: content hash} known present there."""
    paths: dict[str, dict[str, str]] = {}
    for r in db.query(
        "SELECT machine, path, content_hash FROM machine_paths WHERE deployment = ?", [deployment]
    ):
        paths.setdefault(r["machine"], {})[r["path"]] = r["content_hash"]
    return paths


@dataclass(frozen=True)
class MachineHealth:
    unreachable_since: float | None
    failed_since: float | None


def machine_health(db: StateDB, deployment: str) -> dict[str, MachineHealth]:
    """What failover knows of each machine (SPEC §10): empty without failover."""
    return {
        r["machine"]: MachineHealth(r["unreachable_since"], r["failed_since"])
        for r in db.query(
            "SELECT machine, unreachable_since, failed_since FROM machine_health "
            "WHERE deployment = ?",
            [deployment],
        )
    }


def failed_machines(db: StateDB | None, deployment: str) -> dict[str, float]:
    """Machines recorded as failed, with since when (seconds since the epoch)."""
    if db is None:
        return {}
    return {m: h.failed_since for m, h in machine_health(db, deployment).items() if h.failed_since}


def allocations(db: StateDB) -> dict[str, str]:
    """Every allocated value of every deployment (they are host-wide: addresses, subnets)."""
    return {r["key"]: r["value"] for r in db.query("SELECT key, value FROM allocations")}


def store_sizes(db: StateDB) -> dict[str, int]:
    return {r["path"]: r["size"] for r in db.query("SELECT path, size FROM store_paths")}


# --- the planner's view --------------------------------------------------------------


def read_recorded(db: StateDB | None, deployment: str) -> RecordedState:
    """The recorded state of one deployment; empty when nothing was recorded."""
    if db is None:
        return RecordedState(deployment=deployment)
    taken, sizes = allocations(db), store_sizes(db)
    row = deployment_row(db, deployment)
    if row is None:
        return RecordedState(deployment=deployment, allocations=taken, path_sizes=sizes)
    paths = machine_paths(db, deployment)
    machines = {
        m.name: recorded_machine(m, paths.get(m.name, ())) for m in machine_rows(db, deployment)
    }
    instances = {i.key: recorded_instance(i) for i in instance_rows(db, deployment)}
    numbers = generations(db, deployment)
    last = max(numbers, default=None)
    return RecordedState(
        deployment=deployment,
        generation=last,
        revision=numbers[last] if last is not None else None,
        machines=machines,
        instances=instances,
        service_order=row.service_order,
        allocations=taken,
        path_sizes=sizes,
        failed=frozenset(failed_machines(db, deployment)),
        snapshots=kept_snapshots(db, deployment),
    )


def recorded_machine(m: MachineRow | DesiredMachine, paths: Iterable[str]) -> RecordedMachine:
    """The planner's view of a machine: a recorded one, or a desired one seen as if it
    were deployed (`plan --against`): provisioned (its id unknown), nothing else recorded."""
    if isinstance(m, MachineRow):
        provider_id, provider_state, connection = m.provider_id, m.provider_state, m.connection
    else:
        provider_id = "(base)" if m.target_env in ("container", "ec2") else None
        provider_state, connection = None, {}
    return RecordedMachine(
        name=m.name,
        target_env=m.target_env,
        address=m.address,
        profile=m.profile,
        paths=frozenset(paths),
        provider_id=provider_id,
        provider_state=provider_state,
        provider=m.provider,
        location=m.location,
        connection=connection,
    )


def recorded_instance(i: InstanceRow | DesiredInstance) -> RecordedInstance:
    """The planner's view of an instance: a recorded one, or a desired one as if deployed."""
    return RecordedInstance(
        key=i.key,
        service=i.service,
        machine=i.machine,
        type=i.type,
        identity=i.identity,
        inputs=i.inputs,
        package_path=i.package_path,
        port=i.port,
    )


# --- the status/history view ----------------------------------------------------------


def read_deployment(db: StateDB, name: str) -> DeploymentRecord | None:
    """Everything recorded about one deployment; None when it is not recorded."""
    row = deployment_row(db, name)
    if row is None:
        return None
    return DeploymentRecord(
        name=name,
        last_applied_sha=row.last_applied_sha,
        last_attempted_sha=row.last_attempted_sha,
        attempts=attempt_rows(db, name),
        machines=machine_rows(db, name),
        instances=instance_rows(db, name),
        paths=machine_paths(db, name),
        conditions=row.conditions,
        service_order=row.service_order,
        health=machine_health(db, name),
    )


def change_summary(summary: dict[str, int] | None) -> str | None:
    """'+activated ~replaced -deactivated' instances, from a plan's summary."""
    if not summary:
        return None
    return (
        f"+{summary.get('toActivate', 0)} ~{summary.get('toReplace', 0)} "
        f"-{summary.get('toDeactivate', 0)}"
    )


def _conditions(raw: str | None) -> list[dict[str, Any]]:
    try:
        value = json.loads(raw or "[]")
    except ValueError:
        return []
    return [c for c in value if isinstance(c, dict)] if isinstance(value, list) else []


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
