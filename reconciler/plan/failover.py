"""A plan with failed machines (SPEC §10): a failed machine is not locked or touched.
What the plan would do there is left as it is — its instances stay recorded (so the
next generation after the machine answers again deactivates those that no longer belong
there), explicit instances on it are reported as lost — and nothing is sent to it. Pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from reconciler.plan.types import InstanceChange, Plan

LOST = "lost"  # an instance on a failed machine: not touched, reported


def without_failed(plan: Plan, failed: Collection[str]) -> Plan:
    if not failed:
        return plan
    # state on a failed machine cannot be read: no snapshot of it is kept anywhere else,
    # so the instance waiting for it does not start empty — it waits for that machine
    stranded = {f"{m.service}@{m.target}": m.source for m in plan.moves if m.source in failed}
    on_failed = {c.key for c in plan.instances if c.machine in failed} | set(stranded)
    instances = [
        dataclasses.replace(c, action=LOST, reasons=_with_failed(c, stranded.get(c.key)))
        if c.key in on_failed and c.action != "keep"
        else c
        for c in plan.instances
    ]
    lost = [c.key for c in instances if c.action == LOST]
    warnings = [
        f"{key}: its state is on failed machine {source}: it starts once {source} answers "
        "again (no snapshot of it is kept elsewhere)"
        for key, source in sorted(stranded.items())
    ]
    return dataclasses.replace(
        plan,
        instances=instances,
        transfers=[t for t in plan.transfers if t.machine not in failed],
        profiles=[p for p in plan.profiles if p.machine not in failed],
        moves=[m for m in plan.moves if m.source not in failed and m.target not in failed],
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


def _with_failed(c: InstanceChange, state_on: str | None) -> tuple[str, ...]:
    said = (
        f"its state is on failed machine {state_on}" if state_on else f"machine {c.machine} failed"
    )
    return c.reasons if any(r.startswith(said) for r in c.reasons) else (*c.reasons, said)


def lost_instances(plan: Plan) -> list[InstanceChange]:
    return [c for c in plan.instances if c.action == LOST]
