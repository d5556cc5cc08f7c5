"""Rolling replacement in the plan (SPEC §9): which services replace their instances in
batches, how large the batches are, and which stateless instances that move stop only
after their service runs on its new machine. Pure."""

from __future__ import annotations

import math

from reconciler.desired.state import DesiredState, RolloutPolicy
from reconciler.plan.types import InstanceChange, Rollout
from reconciler.state.recorded import RecordedState


def batch_size(max_unavailable: str, instances: int) -> int:
    """maxUnavailable as a count: a number, or a percentage of the service's instances
    rounded up; at least 1."""
    if max_unavailable.endswith("%"):
        return max(1, math.ceil(instances * float(max_unavailable[:-1]) / 100))
    return max(1, int(max_unavailable))


def rollouts(
    desired: DesiredState, recorded: RecordedState, changes: list[InstanceChange]
) -> list[Rollout]:
    """A rollout for every service with more instances to replace in place than may be
    down at once; the others are replaced all at once, as before."""
    out = []
    for service in sorted({c.service for c in changes if c.action == "replace"}):
        policy = desired.rollouts.get(service, RolloutPolicy())
        replaced = sorted(
            (c for c in changes if c.service == service and c.action == "replace"),
            key=lambda c: (c.machine, c.key),
        )
        both = [k for k, i in desired.instances.items() if i.service == service]
        size = batch_size(policy.max_unavailable, len(both))
        if len(replaced) > size:
            out.append(Rollout(service, tuple(c.key for c in replaced), size, policy.min_ready))
    return out


def describe(rollout: Rollout) -> str:
    """`api: 3 instances in 3 batches of 1, minReady 5s`."""
    n, batches = len(rollout.keys), len(rollout.batches)
    return (
        f"{rollout.service}: {n} instance{'s' * (n != 1)} in {batches} "
        f"batch{'es' * (batches != 1)} of {rollout.batch_size}, "
        f"minReady {_duration(rollout.min_ready)}"
    )


def _duration(seconds: float) -> str:
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def deactivate_after(
    desired: DesiredState, recorded: RecordedState, changes: list[InstanceChange]
) -> list[str]:
    """Stateless process instances leaving a machine while their service starts on
    another: they stop after it is up there (start before stop)."""
    arriving = {c.service for c in changes if c.action == "activate"}
    return [
        c.key
        for c in changes
        if c.action == "deactivate"
        and c.service in arriving
        and recorded.instances[c.key].type == "process"
        and c.service not in desired.move_state
    ]
