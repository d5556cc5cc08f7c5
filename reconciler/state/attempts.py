"""Writing an attempt's life: started (before anything on a machine changes), then
finished — failed, rolled back or stalled with its reason — or recorded as the
deployment's next generation with everything it left on the machines."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.desired.state import DesiredState
from reconciler.state.db import StateDB, execute_many, now, transaction
from reconciler.state.locks import Lease, fence
from reconciler.state.machines import upsert_allocations, upsert_paths


def start_attempt(
    db: StateDB, desired: DesiredState, plan: Mapping[str, Any], fences: Sequence[Lease] = ()
) -> str:
    """Record an attempt as running, before anything on a machine changes; its id owns
    the machines' locks and the journal entries."""
    dep, rev, stamp = desired.deployment, desired.revision, now()
    attempt = str(uuid.uuid4())
    with transaction(db):
        for lease in fences:
            fence(db, lease)
        db.execute(
            "INSERT INTO deployments (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [dep, stamp],
        )
        db.execute(
            "INSERT INTO attempts (id, deployment, commit_sha, author, email, subject, "
            "commit_time, started_at, status, plan) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?)",
            [
                attempt,
                dep,
                rev.sha if rev else None,
                rev.author if rev else None,
                rev.email if rev else None,
                rev.subject if rev else None,
                rev.time if rev else None,
                stamp,
                json.dumps(plan),
            ],
        )
        db.execute(
            "UPDATE deployments SET last_attempted_sha = ? WHERE name = ?",
            [rev.sha if rev else None, dep],
        )
    return attempt


def finish_attempt(
    db: StateDB,
    attempt: str,
    status: str,
    reason: str | None = None,
    fences: Sequence[Lease] = (),
) -> None:
    """A failed, rolled back or stalled attempt: recorded with its reason."""
    with transaction(db):
        for lease in fences:
            fence(db, lease)
        db.execute(
            "UPDATE attempts SET status = ?, reason = ?, finished_at = ? WHERE id = ?",
            [status, reason, now(), attempt],
        )


def record_generation(
    db: StateDB,
    attempt: str,
    desired: DesiredState,
    present_paths: Mapping[str, Mapping[str, str]],
    requests: Mapping[str, Mapping[str, Any]],
    number: int | None = None,
    fences: Sequence[Lease] = (),
    carried: Sequence[str] = (),
) -> int:
    """The attempt succeeded: it becomes the deployment's next generation (returned).

    `carried`: instances recorded before that stay recorded as they were (on a failed
    machine nothing was touched: the next generation takes them down once it answers).

    `present_paths` maps machine → {store path: content hash} now on that target;
    `requests` maps instance key → the activation request it runs with (for rollback).
    `number` is given only by `reconstruct`, which restores the machines' own number.
    """
    dep = desired.deployment
    rev = desired.revision
    stamp = now()
    with transaction(db):
        for lease in fences:
            fence(db, lease)
        number = number or next_generation(db, dep)
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
        still = f" OR name IN ({', '.join('?' * len(wanted))})" if wanted else ""  # not IN ()
        db.execute(
            f"DELETE FROM machines WHERE deployment = ? AND (provider_id IS NULL{still})",
            [dep, *wanted],
        )
        execute_many(
            db,
            "INSERT INTO machines (provider_id, provider_state, deployment, name, target_env, "
            "address, state_dir, profile, provider, location, connection, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                [
                    *provisioned.get(m.name, (None, None)),
                    dep,
                    m.name,
                    m.target_env,
                    m.address,
                    m.state_dir,
                    json.dumps(list(m.profile)),
                    json.dumps(m.provider),
                    m.location,
                    json.dumps(m.connection),
                    stamp,
                ]
                for m in desired.machines.values()
            ),
        )
        kept = [
            r
            for key in carried
            for r in db.query(
                "SELECT * FROM instances WHERE deployment = ? AND key = ?", [dep, key]
            )
        ]
        db.execute("DELETE FROM instances WHERE deployment = ?", [dep])
        execute_many(
            db,
            "INSERT INTO instances (deployment, key, service, machine, type, identity, inputs, "
            "package_path, port, generation, request) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                [
                    dep,
                    i.key,
                    i.service,
                    i.machine,
                    i.type,
                    i.identity,
                    json.dumps(i.inputs),
                    i.package_path,
                    i.port,
                    number,
                    json.dumps(requests.get(i.key)),
                ]
                for i in desired.instances.values()
                if i.key not in carried
            ),
        )
        for row in kept:
            columns = list(row)
            db.execute(
                f"INSERT INTO instances ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                [row[c] for c in columns],
            )
        upsert_paths(db, dep, present_paths)
        db.execute("DELETE FROM allocations WHERE deployment = ?", [dep])
        upsert_allocations(db, dep, desired.allocations)
    return number


def next_generation(db: StateDB, deployment: str) -> int:
    row = next(
        db.query("SELECT max(generation) AS n FROM attempts WHERE deployment = ?", [deployment])
    )
    return 1 + (row["n"] or 0)


def set_reason(db: StateDB, attempt: str, reason: str) -> None:
    with transaction(db):
        db.execute("UPDATE attempts SET reason = ? WHERE id = ?", [reason, attempt])
