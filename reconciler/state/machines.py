"""Writing what is known of machines and store paths: what a transfer left on a
machine, what provisioning made or destroyed, what the local store cache holds, and
what gc removed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from reconciler.desired.state import DesiredState
from reconciler.state.db import StateDB, execute_many, now, transaction
from reconciler.store.local import PathInfo


def upsert_paths(db: StateDB, deployment: str, present: Mapping[str, Mapping[str, str]]) -> None:
    """machine → {store path: content hash} verified present there."""
    execute_many(
        db,
        "INSERT INTO machine_paths (deployment, machine, path, content_hash) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (deployment, machine, path) "
        "DO UPDATE SET content_hash = excluded.content_hash",
        ([deployment, m, p, h] for m, paths in present.items() for p, h in paths.items()),
    )


def upsert_allocations(db: StateDB, deployment: str, values: Mapping[str, str]) -> None:
    execute_many(
        db,
        "INSERT INTO allocations (key, value, deployment) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, deployment = excluded.deployment",
        ([k, v, deployment] for k, v in values.items()),
    )


def record_store_paths(db: StateDB, infos: Iterable[PathInfo]) -> None:
    """What the local store cache holds: sizes for plans, hashes for transfers."""
    stamp = now()
    with transaction(db):
        execute_many(
            db,
            "INSERT INTO store_paths (path, size, content_hash, built_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (path) DO UPDATE SET size = excluded.size, "
            "content_hash = excluded.content_hash, built_at = excluded.built_at",
            ([i.path, i.size, i.content_hash, stamp] for i in infos),
        )


def record_transfer(
    db: StateDB,
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
        upsert_paths(db, dep, present)
        upsert_allocations(db, dep, desired.allocations)


def record_provisioned(
    db: StateDB,
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
            execute_many(db, "DELETE FROM allocations WHERE key = ?", ([k] for k in allocations))
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
        upsert_allocations(db, deployment, allocations)


def forget_machines(db: StateDB, deployment: str) -> None:
    """Every machine of a deployment that destroy took down with its disks."""
    with transaction(db):
        db.execute("DELETE FROM machines WHERE deployment = ?", [deployment])


def forget_removed_paths(db: StateDB, removed: Mapping[str | None, Iterable[str]]) -> None:
    """Paths gone from a location are gone for every deployment recorded there."""
    with transaction(db):
        for location, paths in removed.items():
            gone = list(paths)
            for row in db.query(
                "SELECT deployment, name FROM machines WHERE location = ?", [location]
            ):
                execute_many(
                    db,
                    "DELETE FROM machine_paths WHERE deployment = ? AND machine = ? AND path = ?",
                    ([row["deployment"], row["name"], p] for p in gone),
                )


def forget_store_paths(db: StateDB, paths: Iterable[str]) -> None:
    with transaction(db):
        execute_many(db, "DELETE FROM store_paths WHERE path = ?", ([p] for p in paths))


HOST_WIDE = ("local-address/", "container-address/")  # values no two keys may share


def reserve_allocations(db: StateDB, deployment: str, values: Mapping[str, str]) -> list[str]:
    """Record a deployment's allocations in one short transaction, unless another key
    already holds one of its host-wide values (a concurrent apply got there first):
    then nothing is recorded, and the keys that collided are returned."""
    with transaction(db):
        taken = {
            r["value"]: r["key"]
            for r in db.query("SELECT key, value FROM allocations")
            if r["key"].startswith(HOST_WIDE) and r["key"] not in values
        }
        clashes = sorted(k for k, v in values.items() if k.startswith(HOST_WIDE) and v in taken)
        if not clashes:
            upsert_allocations(db, deployment, values)
    return clashes


def note_reachability(
    db: StateDB,
    deployment: str,
    seen: Mapping[str, bool],
    after: float,
    gone_since: Mapping[str, float] | None = None,
) -> tuple[list[str], list[str]]:
    """After an observation (machine → reachable): a machine unreachable for longer than
    `after` seconds becomes failed, a failed one that answers again is no longer.
    Returns (newly failed, recovered)."""
    failed: list[str] = []
    recovered: list[str] = []
    clock = time.time()
    with transaction(db):
        known = {
            r["machine"]: (r["unreachable_since"], r["failed_since"])
            for r in db.query(
                "SELECT machine, unreachable_since, failed_since FROM machine_health "
                "WHERE deployment = ?",
                [deployment],
            )
        }
        for machine, reachable in sorted(seen.items()):
            since, failed_since = known.get(machine, (None, None))
            if reachable:
                if failed_since is not None:
                    recovered.append(machine)
                since = failed_since = None
            else:
                since = since if since is not None else (gone_since or {}).get(machine, clock)
                if failed_since is None and clock - since > after:
                    failed_since = clock
                    failed.append(machine)
            db.execute(
                "INSERT INTO machine_health (deployment, machine, unreachable_since, "
                "failed_since) VALUES (?, ?, ?, ?) ON CONFLICT (deployment, machine) DO UPDATE "
                "SET unreachable_since = excluded.unreachable_since, "
                "failed_since = excluded.failed_since",
                [deployment, machine, since, failed_since],
            )
    return failed, recovered
