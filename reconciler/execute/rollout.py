"""The activation phase of a transition, service by service in dependency order (SPEC
§3 step 5, §9): each service first starts its new instances, then replaces its changed
ones in batches — stop the old, start the new, pass its health check, stay healthy for
`minReady` — and last stops the stateless instances that moved away from a machine, so
a moving service starts before it stops. Independent services roll at the same time,
within `maxParallel` per machine.

Each step is appended to the transition's `done` list as it completes, so a rollback
undoes it newest first: batch by batch, in reverse, never more than a batch down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from reconciler.execute.agent_client import AgentError
from reconciler.plan.types import Rollout

if TYPE_CHECKING:
    from reconciler.execute.transition import Transition

HEALTH_EVERY = 0.2  # seconds between checks while a new instance must stay healthy


async def activate_services(t: Transition, requests: Mapping[str, dict[str, Any]]) -> None:
    rolled = {r.service: r for r in t.plan.rollouts}
    rolled_keys = {k for r in t.plan.rollouts for k in r.keys}
    later = set(t.plan.deactivate_after)
    new = t.desired.instances
    fresh: dict[str, list[str]] = {}
    for key in t.plan.activation_order:
        if key not in rolled_keys:
            fresh.setdefault(new[key].service, []).append(key)
    leaving: dict[str, list[str]] = {}
    for key in t.plan.deactivation_order:
        if key in later:
            leaving.setdefault(t.recorded.instances[key].service, []).append(key)
    services = sorted(set(fresh) | set(rolled) | set(leaving))
    done = {s: asyncio.Event() for s in services}
    failures: list[BaseException] = []

    async def one(service: str) -> None:
        try:
            for dep in t.desired.service_order.get(service, ()):
                if dep in done:
                    await done[dep].wait()
            if failures:
                return
            await asyncio.gather(*(_activate(t, k, requests[k]) for k in fresh.get(service, [])))
            if service in rolled:
                await _roll(t, rolled[service], requests, lambda: bool(failures))
            await asyncio.gather(*(t.deactivate(k) for k in leaving.get(service, [])))
        except Exception as e:
            failures.append(e)
        finally:
            done[service].set()

    await asyncio.gather(*(one(s) for s in services))
    if failures:
        raise failures[0]


async def _activate(t: Transition, key: str, request: dict[str, Any]) -> None:
    inst = t.desired.instances[key]
    async with t.machine_slot(inst.machine):
        entry = t.journal.begin(
            "transition", inst.machine, "activate", instance=key, request=request
        )
        t.activating.add(key)
        await t.agent_call(inst.machine, "activate", dict(request))
        t.journal.end(entry)
        t.done.append(("activate", key))
        t.activating.discard(key)


async def _roll(
    t: Transition,
    rollout: Rollout,
    requests: Mapping[str, dict[str, Any]],
    stopped: Callable[[], bool],
) -> None:
    """Batch after batch; none starts once anything else in the attempt has failed."""
    batches = rollout.batches
    for number, batch in enumerate(batches, start=1):
        if stopped():
            return
        t.report(f"{rollout.service}: batch {number}/{len(batches)}: replacing {', '.join(batch)}")
        entry = t.journal.begin(
            "transition",
            None,
            "rollout-batch",
            service=rollout.service,
            batch=number,
            batches=len(batches),
            instances=list(batch),
            plan=[list(b) for b in batches],  # every batch: the page places each instance
        )
        t.rolling[rollout.service] = (number, len(batches))
        await asyncio.gather(*(t.deactivate(k) for k in batch))
        await asyncio.gather(*(_activate(t, k, requests[k]) for k in batch))
        if rollout.min_ready > 0:
            await _stay_ready(t, batch, requests, rollout.min_ready)
        t.journal.end(entry)
    t.rolling.pop(rollout.service, None)


async def _stay_ready(
    t: Transition, batch: tuple[str, ...], requests: Mapping[str, dict[str, Any]], hold: float
) -> None:
    """Each new instance must keep passing its health check for `hold` seconds."""
    deadline = time.monotonic() + hold
    while True:
        for key in batch:
            machine = t.desired.instances[key].machine
            request = requests[key]
            item = {**request["instance"], "identity": request["identity"]}
            answer = await t.agent_call(
                machine,
                "status",
                {"stateDir": request["stateDir"], "deployment": request["deployment"],
                 "instances": [item]},
            )  # fmt: skip
            seen = (answer.get("instances") or {}).get(key) or {}
            if seen.get("state") != "active" or seen.get("healthy") is False:
                why = "stopped" if seen.get("state") != "active" else "failed its health check"
                raise AgentError(machine, f"{key} {why} within minReady ({hold:g} s)")
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(HEALTH_EVERY, left))
