"""The recorded state as the planner sees it: plain data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.state.snapshots import KeptSnapshot


@dataclass(frozen=True)
class RecordedMachine:
    name: str
    target_env: str
    address: str | None
    profile: tuple[str, ...] = ()  # package names in the machine profile
    paths: frozenset[str] = frozenset()  # store paths known present on the target
    provider_id: str | None = None  # set once a provisioned machine exists
    provider_state: str | None = None
    provider: dict[str, Any] = field(default_factory=dict)  # provisioned-with settings
    location: str | None = None  # DesiredMachine.location when recorded
    connection: dict[str, Any] = field(default_factory=dict)  # DesiredMachine.connection


@dataclass(frozen=True)
class RecordedInstance:
    key: str
    service: str
    machine: str
    type: str
    identity: str
    inputs: dict[str, str]
    package_path: str
    port: int | None = None


@dataclass(frozen=True)
class RecordedState:
    """What the last generation left on the machines (empty for a new deployment)."""

    deployment: str
    generation: int | None = None
    revision: str | None = None  # commit SHA of the last applied generation
    machines: dict[str, RecordedMachine] = field(default_factory=dict)
    instances: dict[str, RecordedInstance] = field(default_factory=dict)
    service_order: dict[str, tuple[str, ...]] = field(default_factory=dict)
    allocations: dict[str, str] = field(default_factory=dict)
    path_sizes: dict[str, int] = field(default_factory=dict)  # store path → bytes, once built
    failed: frozenset[str] = frozenset()  # machines failover recorded as failed (SPEC §10)
    snapshots: dict[str, KeptSnapshot] = field(default_factory=dict)  # kept, by instance
