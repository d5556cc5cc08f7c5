"""The plan: what an apply would do, as plain data that renders to text, markdown, JSON."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

PLAN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class MachineChange:
    name: str
    # create (provision) | add (first deploy) | update | keep | replace |
    # destroy | obsolete (kept) | remove (forget an unprovisioned machine)
    action: str
    target_env: str
    address: str | None
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class InstanceChange:
    key: str
    service: str
    machine: str
    action: str  # activate | deactivate | replace | keep
    reasons: tuple[str, ...]
    old_identity: str | None
    new_identity: str | None
    placed_by_policy: bool = False  # SPEC §10: the reconciler chose its machine


@dataclass(frozen=True)
class Transfer:
    machine: str
    paths: tuple[str, ...]
    known_bytes: int  # sum of the sizes known (built paths)
    unknown: int  # how many paths have no size yet (not built)


@dataclass(frozen=True)
class ProfileChange:
    machine: str
    old: tuple[str, ...]
    new: tuple[str, ...]


@dataclass(frozen=True)
class StateMove:
    service: str
    source: str
    target: str


@dataclass(frozen=True)
class Rollout:
    """A service whose instances are replaced in place in batches (SPEC §9)."""

    service: str
    keys: tuple[str, ...]  # replaced in place, in machine-name order
    batch_size: int  # maxUnavailable, resolved against the service's instances
    min_ready: float  # seconds a new instance stays healthy before the next batch

    @property
    def batches(self) -> list[tuple[str, ...]]:
        return [
            self.keys[i : i + self.batch_size] for i in range(0, len(self.keys), self.batch_size)
        ]


@dataclass(frozen=True)
class Plan:
    deployment: str
    revision: str | None
    base_revision: str | None
    base_generation: int | None
    machines: list[MachineChange]
    transfers: list[Transfer]
    profiles: list[ProfileChange]
    instances: list[InstanceChange]
    moves: list[StateMove]
    deactivation_order: list[str]
    activation_order: list[str]
    blockers: list[str] = field(default_factory=list)
    rollouts: list[Rollout] = field(default_factory=list)
    # stateless instances moving away: stopped only once their service runs elsewhere
    deactivate_after: list[str] = field(default_factory=list)
    # what a person should know but that does not stop the apply: fewer replicas placed
    # than asked, a state folder left behind, an instance lost with its failed machine
    warnings: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # instances on failed machines, untouched

    def count(self, action: str) -> int:
        return sum(1 for c in self.instances if c.action == action)

    def machine_count(self, *actions: str) -> int:
        return sum(1 for m in self.machines if m.action in actions)

    @property
    def has_changes(self) -> bool:
        return bool(
            self.transfers
            or self.profiles
            or self.moves
            or any(c.action not in ("keep", "lost") for c in self.instances)
            or any(m.action not in ("keep", "obsolete") for m in self.machines)
        )

    def summary(self) -> dict[str, int]:
        return {
            "machinesToCreate": self.machine_count("create"),
            "machinesToAdd": self.machine_count("add"),
            "machinesToReplace": self.machine_count("replace"),
            "machinesToDestroy": self.machine_count("destroy", "remove"),
            "machinesObsolete": self.machine_count("obsolete"),
            "pathsToTransfer": sum(len(t.paths) for t in self.transfers),
            "bytesToTransfer": sum(t.known_bytes for t in self.transfers),
            "toActivate": self.count("activate"),
            "toReplace": self.count("replace"),
            "toDeactivate": self.count("deactivate"),
            "unchanged": self.count("keep"),
            "stateMoves": len(self.moves),
            "profileChanges": len(self.profiles),
        }

    def to_json(self) -> dict[str, Any]:
        """The stable JSON form (documented in the README; version bumps on breaking change)."""
        data: dict[str, Any] = {"formatVersion": PLAN_FORMAT_VERSION}
        for f in fields(self):
            data[_camel_key(f.name)] = _plain(getattr(self, f.name))
        for rollout, out in zip(self.rollouts, data["rollouts"], strict=True):
            out["batches"] = _plain(rollout.batches)
        data["hasChanges"] = self.has_changes
        data["summary"] = self.summary()
        return data


def _plain(value: Any) -> Any:
    """Dataclasses → camelCase dicts, tuples → lists; no deep copies (plans can be large)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {_camel_key(f.name): _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _camel_key(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p.title() for p in rest)
