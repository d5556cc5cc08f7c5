"""DesiredState × RecordedState → Plan. Pure: the same inputs always give the same plan.

Instances are compared by identity (Disnix's set arithmetic on mappings): deactivate
old − new in reverse dependency order of the old graph, activate new − old in
dependency order of the new graph; unchanged mappings are untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from reconciler.desired.state import (
    PROVISIONED_ENVS,
    STATEFUL_TYPES,
    DesiredMachine,
    DesiredState,
)
from reconciler.models.graph import topological_order
from reconciler.plan.failover import without_failed
from reconciler.plan.rollout import deactivate_after, rollouts
from reconciler.plan.types import (
    InstanceChange,
    MachineChange,
    Plan,
    ProfileChange,
    StateMove,
    Transfer,
)
from reconciler.state.recorded import RecordedMachine, RecordedState

_EC2_IMMUTABLE = ("region", "ami", "subnetId")
_INPUT_WORDS = {
    "package": "package",
    "type": "type",
    "command": "command",
    "user": "user",
    "port": "port",
    "address": "machine address",
    "env": "env",
    "properties": "properties",
    "container": "container settings",
}


def make_plan(
    desired: DesiredState,
    recorded: RecordedState,
    *,
    kill_obsolete: bool = False,
    destroy_machines: bool = False,
    allow_recreate: bool = False,
) -> Plan:
    machines, blockers = _machine_changes(
        desired, recorded, kill_obsolete or destroy_machines, allow_recreate
    )
    relocations = _relocations(desired, recorded)
    moves = [m for m in relocations if m.stateful]
    instances = _by_policy(desired, _instance_changes(desired, recorded, relocations))
    deactivate = [c.key for c in instances if c.action in ("deactivate", "replace")]
    activate = [c.key for c in instances if c.action in ("activate", "replace")]
    plan = Plan(
        rollouts=rollouts(desired, recorded, instances),
        deactivate_after=deactivate_after(desired, recorded, instances),
        deployment=desired.deployment,
        revision=desired.revision.sha if desired.revision else None,
        base_revision=recorded.revision,
        base_generation=recorded.generation,
        machines=machines,
        transfers=_transfers(desired, recorded),
        profiles=_profiles(desired, recorded),
        instances=instances,
        moves=[StateMove(m.service, m.source, m.target) for m in moves],
        deactivation_order=_order(
            deactivate,
            recorded.service_order,
            reverse=True,
            service_of={k: recorded.instances[k].service for k in deactivate},
        ),
        activation_order=_order(
            activate,
            desired.service_order,
            reverse=False,
            service_of={k: desired.instances[k].service for k in activate},
        ),
        blockers=[*blockers, *desired.blockers],
        warnings=[*desired.notes, *_state_left_behind(recorded, relocations)],
    )
    # a failed machine is not touched; what moves away from it, from a kept snapshot
    return without_failed(plan, recorded.failed, recorded.snapshots)


def _machine_changes(
    desired: DesiredState, recorded: RecordedState, destroy: bool, allow_recreate: bool
) -> tuple[list[MachineChange], list[str]]:
    changes: list[MachineChange] = []
    blockers: list[str] = []
    for name in sorted(set(desired.machines) | set(recorded.machines)):
        want, have = desired.machines.get(name), recorded.machines.get(name)
        if want and not have:
            action = "create" if want.target_env in PROVISIONED_ENVS else "add"
            changes.append(MachineChange(name, action, want.target_env, want.address, ()))
        elif have and not want:
            provisioned = have.provider_id is not None
            action = ("destroy" if destroy else "obsolete") if provisioned else "remove"
            why = (
                ()
                if action != "obsolete"
                else (
                    "no longer in the model; kept until destroyMachines: true or --kill-obsolete",
                )
            )
            changes.append(MachineChange(name, action, have.target_env, have.address, why))
        elif want and have:
            reasons = []
            if want.target_env != have.target_env:
                reasons.append(f"targetEnv {have.target_env} → {want.target_env}")
            if want.target_env == "ec2" and have.provider_id:
                for key in _EC2_IMMUTABLE:
                    old, new = have.provider.get(key), want.provider.get(key)
                    if old != new:
                        reasons.append(f"ec2.{key} {old} → {new}")
            if reasons and have.provider_id is not None:
                action = "replace"
                if not allow_recreate:
                    blockers.append(
                        f"machine {name}: {', '.join(reasons)} cannot change on an existing "
                        "machine; destroy it first, or apply with --allow-recreate to replace it"
                    )
            elif reasons or moved(want, have) or (want.address and want.address != have.address):
                action = "update"
                if want.address != have.address:
                    reasons.append(f"address {have.address} → {want.display_address}")
                if moved(want, have):
                    reasons.append(
                        "location changed (stateDir or SSH endpoint): everything "
                        "is transferred and activated there again"
                    )
            else:
                action = "keep"
            changes.append(
                MachineChange(name, action, want.target_env, want.address, tuple(reasons))
            )
    return changes, blockers


def _instance_changes(
    desired: DesiredState, recorded: RecordedState, relocations: list[_Relocation]
) -> list[InstanceChange]:
    changes = []
    moved_from = {(m.service, m.target): m.source for m in relocations}
    for key in sorted(set(desired.instances) | set(recorded.instances)):
        want, have = desired.instances.get(key), recorded.instances.get(key)
        if want and have:
            if want.identity == have.identity:
                changes.append(
                    InstanceChange(
                        key, want.service, want.machine, "keep", (), have.identity, want.identity
                    )
                )
            else:
                changes.append(
                    InstanceChange(
                        key,
                        want.service,
                        want.machine,
                        "replace",
                        changed_inputs(have.inputs, want.inputs),
                        have.identity,
                        want.identity,
                    )
                )
        elif want:
            source = moved_from.get((want.service, want.machine))
            why = f"moved from {source}" if source else "new"
            changes.append(
                InstanceChange(
                    key, want.service, want.machine, "activate", (why,), None, want.identity
                )
            )
        elif have:
            if have.machine not in desired.machines:
                why = f"machine {have.machine} removed"
            elif have.service in desired.digests:  # the service is still deployed elsewhere
                why = f"no longer distributed to {have.machine}"
            else:
                why = "service no longer deployed"
            changes.append(
                InstanceChange(
                    key, have.service, have.machine, "deactivate", (why,), have.identity, None
                )
            )
    return changes


def _by_policy(desired: DesiredState, changes: list[InstanceChange]) -> list[InstanceChange]:
    """Instances placed by policy say so, and why one moved (SPEC §10)."""
    out = []
    for c in changes:
        why = desired.placement_reasons.get(c.key)
        if why is None:
            out.append(c)
            continue
        policy = c.key in desired.placed_by_policy
        reasons = (why,) if c.action != "replace" else (why, *c.reasons)
        out.append(replace(c, reasons=reasons, placed_by_policy=policy))
    return out


def _state_left_behind(recorded: RecordedState, relocations: list[_Relocation]) -> list[str]:
    """A process keeps its state folder where it was unless the service says moveState
    (SPEC §12). The record keeps no folder sizes, so the warning names the machine only."""
    return [
        f"{m.service} moves {m.source} → {m.target}: its state folder (RECONCILER_STATE) on "
        f"{m.source} is not moved (size not recorded); set moveState: true on {m.service} "
        "to move it"
        for m in relocations
        if not m.stateful and recorded.instances[f"{m.service}@{m.source}"].type == "process"
    ]


def changed_inputs(old: Mapping[str, str], new: Mapping[str, str]) -> tuple[str, ...]:
    """Which identity inputs differ, in words: ("port 8001 → 8002", "dependsOn staff-db")."""
    out = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        if ":" in name and not name.startswith("sha256"):
            kind, dep = name.split(":", 1)
            if before is None:
                out.append(f"{kind} {dep} added")
            elif after is None:
                out.append(f"{kind} {dep} removed")
            else:
                out.append(f"{kind} {dep} changed")
        elif name == "package":
            out.append(f"package {_short_path(before)} → {_short_path(after)}")
        else:
            word = _INPUT_WORDS.get(name, name)
            if (
                before
                and after
                and len(before) + len(after) <= 60
                and not before.startswith("sha256")
            ):
                out.append(f"{word} {before} → {after}")
            else:
                out.append(word)
    return tuple(out)


def _short_path(path: str | None) -> str:
    if path is None:
        return "none"
    digest, _, name = path.partition("-")
    return f"{name}@{digest[:8]}"


def _transfers(desired: DesiredState, recorded: RecordedState) -> list[Transfer]:
    out = []
    for name, m in sorted(desired.machines.items()):
        have = recorded.machines.get(name)
        present = have.paths if have and not moved(m, have) else frozenset()
        missing = tuple(p for p in m.closure if p not in present)
        if not missing:
            continue
        sizes = [recorded.path_sizes.get(p) for p in missing]
        known = [s for s in sizes if s is not None]
        out.append(Transfer(name, missing, sum(known), len(sizes) - len(known)))
    return out


def _profiles(desired: DesiredState, recorded: RecordedState) -> list[ProfileChange]:
    out = []
    for name, m in sorted(desired.machines.items()):
        have = recorded.machines.get(name)
        old = have.profile if have else ()
        if tuple(m.profile) != tuple(old):
            out.append(ProfileChange(name, tuple(old), tuple(m.profile)))
    return out


@dataclass(frozen=True)
class _Relocation:
    service: str
    source: str
    target: str
    stateful: bool


def moved(want: DesiredMachine, have: RecordedMachine) -> bool:
    return have.location is not None and have.location != want.location


def _relocations(desired: DesiredState, recorded: RecordedState) -> list[_Relocation]:
    """Services whose machines changed, paired removed → added in name order; the state
    of a stateful one moves along (snapshot on the old machine, restore on the new)."""
    old: dict[str, set[str]] = {}
    for was in recorded.instances.values():
        old.setdefault(was.service, set()).add(was.machine)
    new: dict[str, set[str]] = {}
    stateful: set[str] = set()
    for want in desired.instances.values():
        new.setdefault(want.service, set()).add(want.machine)
        if want.type in STATEFUL_TYPES or want.service in desired.move_state:
            stateful.add(want.service)
    out = []
    for service, machines in sorted(old.items()):
        now = new.get(service, set())
        if now == machines:
            continue
        for source, target in zip(sorted(machines - now), sorted(now - machines), strict=False):
            out.append(_Relocation(service, source, target, service in stateful))
    return out


def _order(
    keys: list[str],
    service_order: Mapping[str, tuple[str, ...]],
    reverse: bool,
    service_of: Mapping[str, str],
) -> list[str]:
    services = topological_order({service_of[k] for k in keys}, service_order)
    rank = {s: i for i, s in enumerate(services)}
    ordered = sorted(keys, key=lambda k: (rank[service_of[k]], k))
    return ordered[::-1] if reverse else ordered
