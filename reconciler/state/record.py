"""Reading and writing the record of a deployment in the state DB."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlite_utils

from reconciler.desired.state import DesiredState
from reconciler.state.db import transaction
from reconciler.state.recorded import RecordedInstance, RecordedMachine, RecordedState
from reconciler.store.local import PathInfo


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_recorded(db: sqlite_utils.Database | None, deployment: str) -> RecordedState:
    """The recorded state of one deployment; empty when nothing was recorded."""
    if db is None:
        return RecordedState(deployment=deployment)
    allocations = {r["key"]: r["value"] for r in db.query("SELECT key, value FROM allocations")}
    sizes = {r["path"]: r["size"] for r in db.query("SELECT path, size FROM store_paths")}
    row = next(db.query("SELECT * FROM deployments WHERE name = ?", [deployment]), None)
    if row is None:
        return RecordedState(deployment=deployment, allocations=allocations, path_sizes=sizes)
    paths: dict[str, set[str]] = {}
    for r in db.query("SELECT machine, path FROM machine_paths WHERE deployment = ?", [deployment]):
        paths.setdefault(r["machine"], set()).add(r["path"])
    machines = {
        r["name"]: RecordedMachine(
            name=r["name"],
            target_env=r["target_env"],
            address=r["address"],
            profile=tuple(json.loads(r["profile"])),
            paths=frozenset(paths.get(r["name"], ())),
            provider_id=r["provider_id"],
            provider_state=r["provider_state"],
            provider=json.loads(r["provider"]),
            location=r["location"],
            connection=json.loads(r["connection"]),
        )
        for r in db.query("SELECT * FROM machines WHERE deployment = ?", [deployment])
    }
    instances = {
        r["key"]: RecordedInstance(
            key=r["key"],
            service=r["service"],
            machine=r["machine"],
            type=r["type"],
            identity=r["identity"],
            inputs=json.loads(r["inputs"]),
            package_path=r["package_path"],
            port=r["port"],
        )
        for r in db.query("SELECT * FROM instances WHERE deployment = ?", [deployment])
    }
    gen = next(
        db.query(
            "SELECT generation, commit_sha FROM attempts WHERE deployment = ? AND generation "
            "IS NOT NULL ORDER BY generation DESC LIMIT 1",
            [deployment],
        ),
        None,
    )
    return RecordedState(
        deployment=deployment,
        generation=gen["generation"] if gen else None,
        revision=gen["commit_sha"] if gen else None,
        machines=machines,
        instances=instances,
        service_order={k: tuple(v) for k, v in json.loads(row["service_order"]).items()},
        allocations=allocations,
        path_sizes=sizes,
    )


def start_attempt(db: sqlite_utils.Database, desired: DesiredState, plan: Mapping[str, Any]) -> str:
    """Record an attempt as running, before anything on a machine changes; its id owns
    the machines' locks and the journal entries."""
    dep, rev, stamp = desired.deployment, desired.revision, now()
    attempt = str(uuid.uuid4())
    with transaction(db):
        db.execute(
            "INSERT INTO deployments (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [dep, stamp],
        )
        db.table("attempts").insert(
            {
                "id": attempt,
                "deployment": dep,
                "commit_sha": rev.sha if rev else None,
                "author": rev.author if rev else None,
                "email": rev.email if rev else None,
                "subject": rev.subject if rev else None,
                "commit_time": rev.time if rev else None,
                "started_at": stamp,
                "status": "running",
                "plan": json.dumps(plan),
            }
        )
        db.execute(
            "UPDATE deployments SET last_attempted_sha = ? WHERE name = ?",
            [rev.sha if rev else None, dep],
        )
    return attempt


def finish_attempt(
    db: sqlite_utils.Database, attempt: str, status: str, reason: str | None = None
) -> None:
    """A failed, rolled back or stalled attempt: recorded with its reason."""
    with transaction(db):
        db.execute(
            "UPDATE attempts SET status = ?, reason = ?, finished_at = ? WHERE id = ?",
            [status, reason, now(), attempt],
        )


def record_generation(
    db: sqlite_utils.Database,
    attempt: str,
    desired: DesiredState,
    present_paths: Mapping[str, Mapping[str, str]],
    requests: Mapping[str, Mapping[str, Any]],
    number: int | None = None,
) -> int:
    """The attempt succeeded: it becomes the deployment's next generation (returned).

    `present_paths` maps machine → {store path: content hash} now on that target;
    `requests` maps instance key → the activation request it runs with (for rollback).
    `number` is given only by `reconstruct`, which restores the machines' own number.
    """
    dep = desired.deployment
    rev = desired.revision
    stamp = now()
    with transaction(db):
        number = number or 1 + (
            db.execute(
                "SELECT max(generation) FROM attempts WHERE deployment = ?", [dep]
            ).fetchone()[0]
            or 0
        )
        db.execute(
            "UPDATE attempts SET generation = ?, status = 'succeeded', finished_at = ?, "
            "machine_paths = ? WHERE id = ?",
            [
                number,
                stamp,
                json.dumps({m.name: list(m.closure) for m in desired.machines.values()}),
                attempt,
            ],
        )
        # a new generation resumes auto-apply; `rollback` pauses it again afterwards
        db.execute(
            "UPDATE deployments SET last_applied_sha = ?, service_order = ?, paused_at_sha = NULL "
            "WHERE name = ?",
            [
                rev.sha if rev else None,
                json.dumps({k: list(v) for k, v in desired.service_order.items()}),
                dep,
            ],
        )
        # provisioning's record outlives generations: keep it for machines still wanted
        provisioned = {
            r["name"]: (r["provider_id"], r["provider_state"])
            for r in db.query(
                "SELECT name, provider_id, provider_state FROM machines WHERE deployment = ?",
                [dep],
            )
        }
        # a provisioned machine no longer in the model stays recorded until destroyed
        wanted = list(desired.machines)
        db.execute(
            "DELETE FROM machines WHERE deployment = ? AND (provider_id IS NULL OR name IN "
            f"({', '.join('?' * len(wanted))}))",
            [dep, *wanted],
        )
        db.table("machines").insert_all(
            {
                "provider_id": provisioned.get(m.name, (None, None))[0],
                "provider_state": provisioned.get(m.name, (None, None))[1],
                "deployment": dep,
                "name": m.name,
                "target_env": m.target_env,
                "address": m.address,
                "state_dir": m.state_dir,
                "profile": json.dumps(list(m.profile)),
                "provider": json.dumps(m.provider),
                "location": m.location,
                "connection": json.dumps(m.connection),
                "updated_at": stamp,
            }
            for m in desired.machines.values()
        )
        db.execute("DELETE FROM instances WHERE deployment = ?", [dep])
        db.table("instances").insert_all(
            {
                "deployment": dep,
                "key": i.key,
                "service": i.service,
                "machine": i.machine,
                "type": i.type,
                "identity": i.identity,
                "inputs": json.dumps(i.inputs),
                "package_path": i.package_path,
                "port": i.port,
                "generation": number,
                "request": json.dumps(requests.get(i.key)),
            }
            for i in desired.instances.values()
        )
        db.table("machine_paths").upsert_all(
            (
                {"deployment": dep, "machine": m, "path": p, "content_hash": h}
                for m, paths in present_paths.items()
                for p, h in paths.items()
            ),
            pk=("deployment", "machine", "path"),
        )
        db.execute("DELETE FROM allocations WHERE deployment = ?", [dep])
        db.table("allocations").insert_all(
            ({"key": k, "value": v, "deployment": dep} for k, v in desired.allocations.items()),
            replace=True,
        )
    return number


def recorded_requests(db: sqlite_utils.Database, deployment: str) -> dict[str, Any]:
    """The activation requests the recorded instances run with (to re-activate them)."""
    return {
        r["key"]: json.loads(r["request"])
        for r in db.query(
            "SELECT key, request FROM instances WHERE deployment = ? AND request IS NOT NULL",
            [deployment],
        )
        if r["request"] not in (None, "null")
    }


def record_store_paths(db: sqlite_utils.Database, infos: Iterable[PathInfo]) -> None:
    """What the local store cache holds: sizes for plans, hashes for transfers."""
    stamp = now()
    with transaction(db):
        db.table("store_paths").upsert_all(
            (
                {"path": i.path, "size": i.size, "content_hash": i.content_hash, "built_at": stamp}
                for i in infos
            ),
            pk="path",
        )


def record_transfer(
    db: sqlite_utils.Database,
    desired: DesiredState,
    present: Mapping[str, Mapping[str, str]],
) -> None:
    """After step 3: the machines exist and hold these paths; their allocations are kept.

    `present` maps machine → {store path: content hash} now verified on that target.
    """
    dep = desired.deployment
    stamp = now()
    with transaction(db):
        db.execute(
            "INSERT INTO deployments (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [dep, stamp],
        )
        for name in present:
            m = desired.machines[name]
            before = next(
                db.query(
                    "SELECT location FROM machines WHERE deployment = ? AND name = ?", [dep, name]
                ),
                None,
            )
            if before and before["location"] not in (None, m.location):
                # it moved: what was recorded there is not where it is now
                db.execute(
                    "DELETE FROM machine_paths WHERE deployment = ? AND machine = ?", [dep, name]
                )
            db.execute(
                "INSERT INTO machines (deployment, name, target_env, address, state_dir, "
                "provider, location, connection, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (deployment, name) DO UPDATE SET address = excluded.address, "
                "state_dir = excluded.state_dir, location = excluded.location, "
                "connection = excluded.connection, updated_at = excluded.updated_at",
                [
                    dep,
                    name,
                    m.target_env,
                    m.address,
                    m.state_dir,
                    json.dumps(m.provider),
                    m.location,
                    json.dumps(m.connection),
                    stamp,
                ],
            )
        db.table("machine_paths").upsert_all(
            (
                {"deployment": dep, "machine": m, "path": p, "content_hash": h}
                for m, paths in present.items()
                for p, h in paths.items()
            ),
            pk=("deployment", "machine", "path"),
        )
        db.table("allocations").upsert_all(
            ({"key": k, "value": v, "deployment": dep} for k, v in desired.allocations.items()),
            pk="key",
        )


def record_provisioned(
    db: sqlite_utils.Database,
    deployment: str,
    machine: str,
    target_env: str,
    provider: Mapping[str, Any],
    found: Mapping[str, Any] | None,
    allocations: Mapping[str, str],
) -> None:
    """A machine provisioning made (`found`: provider id and state) or destroyed (None),
    with the allocations that say how to reach it."""
    stamp = now()
    with transaction(db):
        db.execute(
            "INSERT INTO deployments (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [deployment, stamp],
        )
        if found is None:  # destroyed: nothing is left there to reach or to remember
            for table, column in (("machines", "name"), ("machine_paths", "machine")):
                db.execute(
                    f"DELETE FROM {table} WHERE deployment = ? AND {column} = ?",
                    [deployment, machine],
                )
            db.conn.executemany(
                "DELETE FROM allocations WHERE key = ?", [(k,) for k in allocations]
            )
            return
        db.execute(
            "INSERT INTO machines (deployment, name, target_env, provider_id, provider_state, "
            "provider, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (deployment, name) DO UPDATE SET provider_id = excluded.provider_id, "
            "provider_state = excluded.provider_state, provider = excluded.provider, "
            "updated_at = excluded.updated_at",
            [
                deployment,
                machine,
                target_env,
                found["provider_id"],
                found["state"],
                json.dumps(dict(provider)),
                stamp,
            ],
        )
        db.table("allocations").upsert_all(
            ({"key": k, "value": v, "deployment": deployment} for k, v in allocations.items()),
            pk="key",
        )
