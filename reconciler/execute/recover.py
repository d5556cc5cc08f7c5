"""Settling an attempt that a killed process left behind (SPEC §3): one that changed no
machine just stops; one that did is rolled back from its journal; a stalled one has its
rollback resumed. Runs under the state DB's lock, before any other apply."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from reconciler.execute.agent import AgentError, call
from reconciler.state.journal import Journal
from reconciler.state.record import finish_attempt, recorded_requests
from reconciler.targets.base import Target, TargetError


@dataclass(frozen=True)
class Settled:
    attempt: str
    status: str  # failed | rolled_back | stalled
    problems: list[str]


def unsettled(db: sqlite_utils.Database, deployment: str) -> list[str]:
    return [
        r["id"]
        for r in db.query(
            "SELECT id FROM attempts WHERE deployment = ? AND status IN ('running', 'stalled') "
            "ORDER BY started_at",
            [deployment],
        )
    ]


async def settle(
    db: sqlite_utils.Database, deployment: str, targets: dict[str, Target], agent: str
) -> list[Settled]:
    results = []
    for attempt in unsettled(db, deployment):
        entries = list(
            db.query(
                "SELECT step, target, action, status, detail FROM journal "
                "WHERE attempt_id = ? AND step = 'transition' ORDER BY id",
                [attempt],
            )
        )
        if not entries:
            finish_attempt(db, attempt, "failed", "interrupted before any machine was changed")
            results.append(Settled(attempt, "failed", []))
            continue
        problems = await _roll_back(db, deployment, attempt, entries, targets, agent)
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
    db: sqlite_utils.Database,
    deployment: str,
    attempt: str,
    entries: list[dict[str, Any]],
    targets: dict[str, Target],
    agent: str,
) -> list[str]:
    journal = Journal(db, attempt)
    old_requests = recorded_requests(db, deployment)
    problems: list[str] = []
    locked = []
    for machine in sorted(targets):  # the dead attempt's leases are ours to take
        with contextlib.suppress(AgentError, TargetError):
            await call(
                targets[machine],
                agent,
                "lock",
                {"stateDir": targets[machine].state_dir, "owner": attempt, "ttl": 60},
            )
            locked.append(machine)

    async def undo(machine: str, command: str, request: dict[str, Any], what: str) -> None:
        if machine not in targets:
            problems.append(f"{what}: machine {machine} is no longer known")
            return
        entry = journal.begin("rollback", machine, command, subject=what)
        try:
            await call(targets[machine], agent, command, request)
        except (AgentError, TargetError) as e:
            journal.end(entry, "failed", error=str(e))
            problems.append(f"{what}: {command} failed: {e}")
        else:
            journal.end(entry)

    try:
        for e in reversed(entries):  # newest first, as the attempt would have
            detail = json.loads(e["detail"])
            if e["action"] == "activate" and "request" in detail:
                await undo(e["target"], "deactivate", detail["request"], detail["instance"])
            elif e["action"] == "deactivate":
                request = old_requests.get(detail["instance"])
                if request is None:
                    problems.append(f"{detail['instance']}: nothing recorded to restore it")
                else:
                    await undo(e["target"], "activate", request, detail["instance"])
            elif e["action"] == "switch-profile" and detail.get("previous"):
                await undo(e["target"], "switch-profile", detail["previous"], e["target"])
    finally:
        for machine in locked:
            with contextlib.suppress(AgentError, TargetError):
                await call(
                    targets[machine],
                    agent,
                    "unlock",
                    {"stateDir": targets[machine].state_dir, "owner": attempt},
                )
    return problems
