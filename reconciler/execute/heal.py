"""Self-heal (SPEC §5 `selfHeal`): re-activate recorded instances a check found dead,
missing or drifted, with the activation requests they were recorded with, in dependency
order, under the machines' leases. Nothing else restarts a crashed process."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reconciler.execute.agent_client import AgentError, call, ensure_agent, ship
from reconciler.execute.leases import Leases
from reconciler.execute.outcome import Outcome, Reason, Result
from reconciler.models.graph import topological_order
from reconciler.state.db import StateDB
from reconciler.state.hostkeys import RecordedHostKeys
from reconciler.state.rows import read_recorded, recorded_requests
from reconciler.store.local import LocalStore
from reconciler.targets.base import TargetError
from reconciler.targets.open import opened

HEALABLE = frozenset({"dead", "missing", "drifted"})


async def heal(db: StateDB, deployment: str, keys: Iterable[str], state_root: Path) -> Outcome:
    """Re-activate the instances `keys`; the outcome's report lists those healed, its
    details the problems."""
    recorded = read_recorded(db, deployment)
    requests = recorded_requests(db, deployment)
    wanted = {k for k in keys if k in recorded.instances}
    problems = [f"{k}: no recorded activation request" for k in sorted(wanted - set(requests))]
    wanted &= set(requests)
    if not wanted:
        return _outcome([], problems)
    services = {recorded.instances[k].service for k in wanted}
    rank = {s: i for i, s in enumerate(topological_order(services, recorded.service_order))}
    machines = {recorded.instances[k].machine for k in wanted}
    store = LocalStore(state_root / "store")
    agent = ensure_agent(store)
    connections = {m: recorded.machines[m].connection for m in machines}
    healed: list[str] = []
    async with opened(connections, state_root, RecordedHostKeys(db)) as targets:

        async def on(machine: str, command: str, request: dict[str, Any]) -> dict[str, Any]:
            return await call(targets[machine], agent.path, command, request)

        leases = Leases(on, {m: t.state_dir for m, t in targets.items()}, f"heal-{uuid.uuid4()}")
        try:
            for m in sorted(machines):
                try:
                    await ship([targets[m]], store, agent)
                    await leases.take(m)
                except (AgentError, TargetError) as e:
                    problems.append(f"{m}: not healed: {e}")
            async with leases.renewing():
                for key in sorted(wanted, key=lambda k: (rank[recorded.instances[k].service], k)):
                    machine = recorded.instances[key].machine
                    if machine not in leases.held:
                        continue
                    try:
                        await on(machine, "activate", requests[key])
                        healed.append(key)
                    except (AgentError, TargetError) as e:
                        problems.append(f"{key}: re-activation failed: {e}")
        finally:
            problems += await leases.release_all()
    return _outcome(healed, problems)


def _outcome(healed: list[str], problems: list[str]) -> Outcome:
    result = Result.APPLIED if healed else Result.FAILED if problems else Result.UNCHANGED
    message = f"re-activated {', '.join(healed)}" if healed else "nothing re-activated"
    return Outcome(result, Reason.HEALED, message, details=problems, report={"healed": healed})
