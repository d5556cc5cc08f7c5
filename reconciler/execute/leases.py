"""Machine leases (SPEC §3 step 4): a lock file on each machine owned by one attempt (or
gc, or self-heal), expiring after LEASE_SECONDS by the machine's clock and renewed
every RENEW_EVERY while held, so a killed holder's lease runs out on its own."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from reconciler.execute.agent_client import AgentError
from reconciler.targets.base import TargetError

LEASE_SECONDS = 60
RENEW_EVERY = 20.0
WAIT_FOR_HELD = 300.0  # how long an attempt waits for another's lease on a machine
POLL_HELD = 0.2
HELD = "lock failed: held by "  # the agent's answer while another owner's lease is live

# (machine, agent command, request) → the agent's answer
Call = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


class Leases:
    """The leases one owner holds; `renewing()` keeps them alive while a block runs."""

    def __init__(self, call: Call, state_dirs: Mapping[str, str], owner: str) -> None:
        self.call, self.state_dirs, self.owner = call, state_dirs, owner
        self.held: list[str] = []

    async def take(self, machine: str, wait: float = 0.0) -> str | None:
        """Lease one machine; returns the owner of an expired lease taken over. While
        another live attempt (of another deployment on the same machine) holds it, wait
        up to `wait` seconds: machines are always leased in name order, so waiting
        cannot deadlock."""
        deadline = time.monotonic() + wait
        while True:
            try:
                got = await self.call(machine, "lock", self._request(machine, ttl=LEASE_SECONDS))
                break
            except AgentError as e:
                if HELD not in e.message or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(POLL_HELD)
        self.held.append(machine)
        took_over = got.get("took_over")
        return str(took_over) if took_over else None

    async def release_all(self) -> list[str]:
        """Give every lease back; what could not be given back (it expires)."""
        machines, self.held = list(reversed(self.held)), []

        async def one(machine: str) -> str | None:
            try:
                await self.call(machine, "unlock", self._request(machine))
            except (AgentError, TargetError) as e:
                return f"{machine}: could not unlock: {e}"
            return None

        return [p for p in await asyncio.gather(*(one(m) for m in machines)) if p]

    @contextlib.asynccontextmanager
    async def renewing(self) -> Any:
        task = asyncio.create_task(self._renew())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            for machine in list(self.held):
                with contextlib.suppress(AgentError, TargetError):
                    await self.call(machine, "lock", self._request(machine, ttl=LEASE_SECONDS))

    def _request(self, machine: str, **more: Any) -> dict[str, Any]:
        return {"stateDir": self.state_dirs[machine], "owner": self.owner, **more}
