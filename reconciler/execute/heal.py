"""Self-heal (SPEC §5 `selfHeal`): re-activate recorded instances a check found dead,
missing or drifted, with the activation requests they were recorded with, in dependency
order, under the machines' locks. Nothing else restarts a crashed process."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path

import sqlite_utils

from reconciler.execute.agent import AgentError, call, ensure_agent, lease, release
from reconciler.models.graph import topological_order
from reconciler.state.hostkeys import RecordedHostKeys
from reconciler.state.record import read_recorded, recorded_requests
from reconciler.store.local import LocalStore
from reconciler.targets.base import Target, TargetError
from reconciler.targets.open import open_target

HEALABLE = frozenset({"dead", "missing", "drifted"})


async def heal(
    db: sqlite_utils.Database, deployment: str, keys: Iterable[str], state_root: Path
) -> tuple[list[str], list[str]]:
    """Re-activate the instances `keys`; returns (healed, problems)."""
    recorded = read_recorded(db, deployment)
    requests = recorded_requests(db, deployment)
    wanted = {k for k in keys if k in recorded.instances}
    problems = [f"{k}: no recorded activation request" for k in sorted(wanted - set(requests))]
    wanted &= set(requests)
    if not wanted:
        return [], problems
    services = {recorded.instances[k].service for k in wanted}
    order = topological_order(services, recorded.service_order)
    rank = {s: i for i, s in enumerate(order)}
    machines = sorted({recorded.instances[k].machine for k in wanted})
    store = LocalStore(state_root / "store")
    agent = ensure_agent(store)
    host_keys = RecordedHostKeys(db)
    targets: dict[str, Target] = {
        m: open_target(m, recorded.machines[m].connection, state_root, host_keys) for m in machines
    }
    owner = f"heal-{uuid.uuid4()}"
    locked: list[str] = []
    healed: list[str] = []
    try:
        for m in machines:
            try:
                await lease(targets[m], store, agent, owner, 120)
                locked.append(m)
            except (AgentError, TargetError) as e:
                problems.append(f"{m}: not healed: {e}")
        for key in sorted(wanted, key=lambda k: (rank[recorded.instances[k].service], k)):
            machine = recorded.instances[key].machine
            if machine not in locked:
                continue
            try:
                await call(targets[machine], agent.path, "activate", requests[key])
                healed.append(key)
            except (AgentError, TargetError) as e:
                problems.append(f"{key}: re-activation failed: {e}")
    finally:
        for m in locked:
            problem = await release(targets[m], agent.path, owner)
            if problem:
                problems.append(problem)
        for t in targets.values():
            await t.close()
    return healed, problems
