"""Undoing one step of a transition (a rollback, or settling a killed attempt): written
ahead to the journal, and a failure collected rather than raised, so the rest of the
rollback still runs."""

from __future__ import annotations

from typing import Any

from reconciler.execute.agent_client import AgentError
from reconciler.execute.leases import Call
from reconciler.state.journal import Journal
from reconciler.targets.base import TargetError


def message(e: BaseException) -> str:
    """An agent's error with the tail of the instance's log, if it sent one."""
    if isinstance(e, AgentError):
        return e.message + (f"\n{e.log}" if e.log else "")
    return str(e)


async def undo(
    call: Call,
    journal: Journal,
    problems: list[str],
    machine: str,
    command: str,
    request: dict[str, Any],
    what: str,
) -> None:
    entry = journal.begin("rollback", machine, command, subject=what)
    try:
        await call(machine, command, request)
    except (AgentError, TargetError) as e:
        journal.end(entry, "failed", error=message(e))
        problems.append(f"{what}: {command} failed: {message(e)}")
    else:
        journal.end(entry)
