"""Settling an attempt that a killed process left behind (SPEC §3): one that changed no
machine just stops; one that did is rolled back from its journal; a stalled one has its
rollback resumed. Runs under the state DB's lock, before any other apply."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from reconciler.execute.agent_client import AgentError, call
from reconciler.execute.leases import Leases
from reconciler.execute.undo import undo
from reconciler.state.attempts import finish_attempt
from reconciler.state.db import StateDB
from reconciler.state.journal import Journal, entries
from reconciler.state.rows import recorded_requests, unsettled
from reconciler.targets.base import Target, TargetError


@dataclass(frozen=True)
class Settled:
    attempt: str
    status: str  # failed | rolled_back | stalled
    problems: list[str]


async def settle(
    db: StateDB, deployment: str, targets: dict[str, Target], agent: str
) -> list[Settled]:
    results = []
    for attempt in unsettled(db, deployment):
        done = entries(db, attempt, "transition")
        if not done:
            finish_attempt(db, attempt, "failed", "interrupted before any machine was changed")
            results.append(Settled(attempt, "failed", []))
            continue
        problems = await _roll_back(db, deployment, attempt, done, targets, agent)
        status = "stalled" if problems else "rolled_back"
        finish_attempt(
            db,
            attempt,
            status,
            "interrupted; rolled back from the journal" if not problems else "; ".join(problems),
        )
        results.append(Settled(attempt, status, problems))
    return results


async def _roll_back(
    db: StateDB,
    deployment: str,
    attempt: str,
    done: list[dict[str, Any]],
    targets: dict[str, Target],
    agent: str,
) -> list[str]:
    journal = Journal(db, attempt)
    old_requests = recorded_requests(db, deployment)
    problems: list[str] = []

    async def on(machine: str, command: str, request: dict[str, Any]) -> dict[str, Any]:
        return await call(targets[machine], agent, command, request)

    # the dead attempt's leases are ours to take
    leases = Leases(on, {m: t.state_dir for m, t in targets.items()}, attempt)
    for machine in sorted(targets):
        with contextlib.suppress(AgentError, TargetError):
            await leases.take(machine)

    async def back(machine: str, command: str, request: dict[str, Any], what: str) -> None:
        if machine not in targets:
            problems.append(f"{what}: machine {machine} is no longer known")
            return
        await undo(on, journal, problems, machine, command, request, what)

    try:
        for e in reversed(done):  # newest first, as the attempt would have
            detail = e["detail"]
            if e["action"] == "activate" and "request" in detail:
                await back(e["target"], "deactivate", detail["request"], detail["instance"])
            elif e["action"] == "deactivate":
                request = old_requests.get(detail["instance"])
                if request is None:
                    problems.append(f"{detail['instance']}: nothing recorded to restore it")
                else:
                    await back(e["target"], "activate", request, detail["instance"])
            elif e["action"] == "switch-profile" and detail.get("previous"):
                await back(e["target"], "switch-profile", detail["previous"], e["target"])
    finally:
        await leases.release_all()
    return problems
