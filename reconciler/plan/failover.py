"""A plan with failed machines (SPEC §10): a failed machine is not locked or touched.
What the plan would do there is left as it is — its instances stay recorded (so the
next generation after the machine answers again deactivates those that no longer belong
there), explicit instances on it are reported as lost — and nothing is sent to it.

A stateful instance that moves away from a failed machine is restored from the snapshot
the controller kept of it (`failover: {stateful: latest-snapshot}`); without one it waits
for that machine rather than start empty. Pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from datetime import UTC, datetime

from reconciler.plan.types import InstanceChange, Plan
from reconciler.state.snapshots import KeptSnapshot

LOST = "lost"  # an instance on a failed machine: not touched, reported


def without_failed(
    plan: Plan, failed: Collection[str], kept: Mapping[str, KeptSnapshot] | None = None
) -> Plan:
    """`kept`: the snapshots the controller kept, by the instance they were taken of."""
    if not failed:
        return plan
    kept = kept or {}
    from_failed = {f"{m.service}@{m.target}": m for m in plan.moves if m.source in failed}
    restored = {
        key: snap
        for key, m in from_failed.items()
        if (snap := kept.get(f"{m.service}@{m.source}")) is not None
    }
    # state on a failed machine cannot be read: without a kept snapshot, the instance
    # waiting for it does not start empty — it waits for that machine
    stranded = {key: m.source for key, m in from_failed.items() if key not in restored}
    on_failed = {c.key for c in plan.instances if c.machine in failed} | set(stranded)
    instances = [
        dataclasses.replace(c, action=LOST, reasons=_with_failed(c, stranded.get(c.key)))
        if c.key in on_failed and c.action != "keep"
        else dataclasses.replace(c, reasons=(*c.reasons, restored_from(restored[c.key])))
        if c.key in restored
        else c
        for c in plan.instances
    ]
    lost = [c.key for c in instances if c.action == LOST]
    warnings = [
        f"{key}: its state is on failed machine {source}: it starts once {source} answers "
        "again (no snapshot of it is kept elsewhere)"
        for key, source in sorted(stranded.items())
    ] + [
        f"{key}: its state is on failed machine {from_failed[key].source}: "
        f"{restored_from(snap)}; what changed there since is lost"
        for key, snap in sorted(restored.items())
    ]
    return dataclasses.replace(
        plan,
        instances=instances,
        transfers=[t for t in plan.transfers if t.machine not in failed],
        profiles=[p for p in plan.profiles if p.machine not in failed],
        moves=[
            m
            for m in plan.moves
            if m.target not in failed
            and (m.source not in failed or f"{m.service}@{m.target}" in restored)
        ],
        deactivation_order=[k for k in plan.deactivation_order if k not in on_failed],
        activation_order=[k for k in plan.activation_order if k not in on_failed],
        deactivate_after=[k for k in plan.deactivate_after if k not in on_failed],
        rollouts=[
            dataclasses.replace(r, keys=keys)
            for r in plan.rollouts
            if (keys := tuple(k for k in r.keys if k not in on_failed))
        ],
        lost=lost,
        warnings=[*plan.warnings, *warnings],
    )


def restored_from(snap: KeptSnapshot) -> str:
    return f"restored from the snapshot of {iso(snap.taken_at)}"


def iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _with_failed(c: InstanceChange, state_on: str | None) -> tuple[str, ...]:
    said = (
        f"its state is on failed machine {state_on}" if state_on else f"machine {c.machine} failed"
    )
    return c.reasons if any(r.startswith(said) for r in c.reasons) else (*c.reasons, said)


def lost_instances(plan: Plan) -> list[InstanceChange]:
    return [c for c in plan.instances if c.action == LOST]
