"""Placement by policy (SPEC §10): which machines a `{replicas, select, spread}` entry puts
its instances on. Pure: policies, machines and the last placement in, machines out.

Stable before balanced: an instance placed earlier stays on its machine while the machine
is in the model, not failed, still matches `select`, offers the container and has the
capacity; only what no longer fits moves. New instances go, one at a time, to the fitting
machine with the fewest of the service's instances on the same `spread` value, then the
lowest used fraction of its capacities once the instance is added, then the first name.
Explicit instances count against capacities first; no machine ever holds more than any
of its capacities (a `requires` name counts against the capacity of the same name; a
machine without that capacity does not limit it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.desired.state import canonical_json
from reconciler.models.checks import matches_select


@dataclass(frozen=True)
class Policy:
    service: str
    service_type: str
    replicas: int
    container: str  # the container its instances go into
    select: Mapping[str, Any] = field(default_factory=dict)
    spread: str | None = None
    requires: Mapping[str, float] = field(default_factory=dict)
    port: int | None = None  # a fixed port: not beside another instance holding it
    beside: tuple[str, ...] = ()  # the sqlite-databases it uses: only where they are
    stays_on_failed: bool = False  # stateful, and not failed over from a snapshot


@dataclass(frozen=True)
class Machine:
    name: str
    properties: Mapping[str, Any] = field(default_factory=dict)
    capacity: Mapping[str, float] = field(default_factory=dict)
    containers: Mapping[str, str] = field(default_factory=dict)  # name → activation type


@dataclass(frozen=True)
class Explicit:
    """An instance the distribution names: it holds its place and capacity first."""

    service: str
    machine: str
    requires: Mapping[str, float] = field(default_factory=dict)
    port: int | None = None


@dataclass(frozen=True)
class Placement:
    machines: dict[str, tuple[str, ...]]  # service → its machines, sorted
    # "service@machine" → why, for the policy's instances and those it takes away
    reasons: dict[str, str]
    notes: tuple[str, ...]  # fewer replicas than asked; state left on a failed machine
    blockers: tuple[str, ...]  # a policy no machine can take at all


class _Fleet:
    """What is placed so far: capacity used, ports held, which machines hold a service."""

    def __init__(self, machines: Mapping[str, Machine], failed: frozenset[str]) -> None:
        self.machines, self.failed = machines, failed
        self.used: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.ports: dict[str, set[int]] = defaultdict(set)
        self.holds: dict[str, set[str]] = defaultdict(set)

    def add(
        self, service: str, machine: str, requires: Mapping[str, float], port: int | None
    ) -> None:
        for name, amount in requires.items():
            self.used[machine][name] += amount
        if port is not None:
            self.ports[machine].add(port)
        self.holds[service].add(machine)

    def why_not(self, p: Policy, name: str) -> str | None:
        """Why the policy's instance cannot be on this machine (None: it can)."""
        m = self.machines.get(name)
        if m is None:
            return f"machine {name} is no longer in the model"
        if name in self.failed:
            return f"machine {name} failed"
        if not matches_select(m.properties, p.select):
            return f"{name} does not match select"
        if m.containers.get(p.container) != p.service_type:
            return f"{name} offers no {p.container} container"
        if p.port is not None and p.port in self.ports[name]:
            return f"port {p.port} is taken on {name}"
        for db in p.beside:
            if name not in self.holds[db]:
                return f"sqlite-database {db} is not on {name}"
        for res, amount in sorted(p.requires.items()):
            cap = m.capacity.get(res)
            if cap is not None and self.used[name][res] + amount > cap:
                used = self.used[name][res]
                return f"{name} has no room for {res} {amount:g} ({used:g} of {cap:g} used)"
        return None

    def fraction_after(self, p: Policy, name: str) -> float:
        """The machine's most used capacity, as a fraction, with this instance added."""
        m = self.machines[name]
        fractions = [
            (self.used[name][res] + p.requires.get(res, 0)) / cap
            for res, cap in m.capacity.items()
            if cap > 0
        ]
        return max(fractions, default=0.0)

    def spread_value(self, p: Policy, name: str) -> str:
        return canonical_json(self.machines[name].properties.get(p.spread or ""))


def place(
    policies: Iterable[Policy],
    machines: Iterable[Machine],
    explicit: Iterable[Explicit] = (),
    recorded: Mapping[str, Sequence[str]] | None = None,
    failed: frozenset[str] = frozenset(),
) -> Placement:
    """`recorded`: service → the machines its policy placed it on last time."""
    fleet = _Fleet({m.name: m for m in machines}, failed)
    for e in explicit:
        fleet.add(e.service, e.machine, e.requires, e.port)
    # databases first: what uses them goes where they are
    order = sorted(policies, key=lambda p: (p.service_type != "sqlite-database", p.service))
    reasons: dict[str, str] = {}
    notes: list[str] = []
    blockers: list[str] = []
    kept: dict[str, list[str]] = {}
    left: dict[str, dict[str, str]] = {}
    for p in order:
        kept[p.service], left[p.service] = _keep(fleet, p, (recorded or {}).get(p.service, ()))
        for name in kept[p.service]:
            if name in failed:
                notes.append(
                    f"{p.service}: its state is on {name}, which failed; left there "
                    "(failover: {stateful: latest-snapshot} would restore its latest "
                    "snapshot on another machine)"
                )
    for e in explicit:
        if e.machine in failed:
            notes.append(
                f"{e.service}@{e.machine}: machine {e.machine} failed; this instance is lost "
                "until it returns (explicit instances are not moved)"
            )
    out: dict[str, tuple[str, ...]] = {}
    for p in order:
        new = _place_new(fleet, p, len(kept[p.service]))
        placed = sorted([*kept[p.service], *new])
        out[p.service] = tuple(placed)
        gone = sorted(left[p.service])
        pairs = dict(zip(sorted(new), gone, strict=False))
        for name in placed:
            source = pairs.get(name)
            why = f"; moved from {source}: {left[p.service][source]}" if source else ""
            reasons[f"{p.service}@{name}"] = "placed by policy" + why
        moved_to = {v: k for k, v in pairs.items()}
        for name in gone:
            to = f"; placed on {moved_to[name]} instead" if name in moved_to else ""
            reasons[f"{p.service}@{name}"] = left[p.service][name] + to
        if len(placed) < p.replicas:
            misfits = [
                misfit
                for name in sorted(fleet.machines)
                if name not in placed and (misfit := fleet.why_not(p, name))
            ]
            detail = "; ".join(misfits[:6]) + (" …" if len(misfits) > 6 else "")
            detail = f"no other machine fits ({detail})" if misfits else "no other machine"
            if placed:
                notes.append(
                    f"{p.service}: {len(placed)} of {p.replicas} replicas placed; {detail}"
                )
            else:
                blockers.append(
                    f"{p.service}: no machine fits any of its {p.replicas} replicas "
                    f"({'; '.join(misfits)}); change its select, requires or the machines' "
                    "capacity"
                )
    return Placement(out, reasons, tuple(notes), tuple(blockers))


def _keep(fleet: _Fleet, p: Policy, recorded: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The recorded machines the policy's instances stay on, and why the others leave."""
    kept: list[str] = []
    left: dict[str, str] = {}
    for name in sorted(set(recorded)):
        stuck = name in fleet.failed and p.stays_on_failed and name in fleet.machines
        why = None if stuck else fleet.why_not(p, name)
        if why is None and len(kept) >= p.replicas:
            why = f"replicas lowered to {p.replicas}"
        if why is None:
            kept.append(name)
            fleet.add(p.service, name, p.requires, p.port)
        else:
            left[name] = why
    return kept, left


def _place_new(fleet: _Fleet, p: Policy, have: int) -> list[str]:
    new: list[str] = []
    for _ in range(p.replicas - have):
        fitting = [
            n
            for n in sorted(fleet.machines)
            if n not in fleet.holds[p.service] and fleet.why_not(p, n) is None
        ]
        if not fitting:
            break
        taken = [fleet.spread_value(p, n) for n in fleet.holds[p.service]]
        best = min(
            fitting,
            key=lambda n: (
                taken.count(fleet.spread_value(p, n)) if p.spread else 0,
                fleet.fraction_after(p, n),
                n,
            ),
        )
        fleet.add(p.service, best, p.requires, p.port)
        new.append(best)
    return new
