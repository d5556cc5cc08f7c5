"""Kept snapshots (SPEC §10 `failover: {stateful: latest-snapshot}`): the latest snapshot
of each stateful instance placed by policy, copied to the controller's side so that it
outlives its machine. The state records where the copy is, when it was taken, its size
and hash — never the state itself, which may hold secrets."""

from __future__ import annotations

import json
from dataclasses import dataclass

from reconciler.desired.compile import snapshots_key
from reconciler.state.db import StateDB, transaction


@dataclass(frozen=True)
class KeptSnapshot:
    instance: str  # "service@machine" it was taken of
    machine: str
    generation: int | None  # the generation that instance ran in then
    taken_at: float  # seconds since the epoch
    path: str  # the copy, on the controller's side
    size: int
    sha256: str


def kept_snapshots(db: StateDB, deployment: str) -> dict[str, KeptSnapshot]:
    """By instance key."""
    return {
        r["instance"]: KeptSnapshot(
            r["instance"],
            r["machine"],
            r["generation"],
            r["taken_at"],
            r["path"],
            r["size"],
            r["sha256"],
        )
        for r in db.query(
            "SELECT instance, machine, generation, taken_at, path, size, sha256 "
            "FROM kept_snapshots WHERE deployment = ? ORDER BY instance",
            [deployment],
        )
    }


def snapshots_wanted(db: StateDB, deployment: str) -> list[str]:
    """The instances of the last generation whose latest snapshot is kept (the compile
    says which, among the allocations the generation recorded)."""
    for r in db.query("SELECT value FROM allocations WHERE key = ?", [snapshots_key(deployment)]):
        return [str(k) for k in json.loads(r["value"])]
    return []


def keep_snapshot(db: StateDB, deployment: str, snap: KeptSnapshot) -> None:
    with transaction(db):
        db.execute(
            "INSERT INTO kept_snapshots (deployment, instance, machine, generation, taken_at, "
            "path, size, sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (deployment, instance) DO UPDATE SET machine = excluded.machine, "
            "generation = excluded.generation, taken_at = excluded.taken_at, "
            "path = excluded.path, size = excluded.size, sha256 = excluded.sha256",
            [
                deployment,
                snap.instance,
                snap.machine,
                snap.generation,
                snap.taken_at,
                snap.path,
                snap.size,
                snap.sha256,
            ],
        )


def forget_snapshot(db: StateDB, deployment: str, instance: str) -> None:
    with transaction(db):
        db.execute(
            "DELETE FROM kept_snapshots WHERE deployment = ? AND instance = ?",
            [deployment, instance],
        )
