"""The desired state: what a deployment at a commit should be, fully resolved.

Everything here is derived from the models and the recorded allocations alone, so a
plan knows every store path and instance identity without building anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from reconciler.models.schema import HealthCheck, KeySpec, SshSettings
from reconciler.models.source import Revision

KNOWN_AFTER_APPLY = "(known after apply)"
STATEFUL_TYPES = frozenset({"sqlite-database", "wrapper"})
PROVISIONED_ENVS = frozenset({"container", "ec2"})


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def location_of(target_env: str, state_dir: str | None, ssh: SshSettings | None) -> str:
    """Where a machine's files and processes live: a change moves everything on it."""
    where = {
        "targetEnv": target_env,
        "stateDir": state_dir,
        "ssh": [ssh.host, ssh.port, ssh.user] if ssh else None,
    }
    return canonical_json(where)


@dataclass(frozen=True)
class StorePackage:
    name: str
    hash: str  # 32 hex digits, input-addressed (SPEC §2.4)
    src: str | None  # folder in the models tree
    src_tree: str | None  # its Git tree id at the commit
    build: str | None
    deps: tuple[str, ...]  # package names
    closure: tuple[str, ...]  # store path names: this one and all its deps', sorted

    @property
    def path(self) -> str:
        """The store path's name under `<stateDir>/store/`."""
        return f"{self.hash}-{self.name}"


@dataclass(frozen=True)
class DesiredMachine:
    name: str
    target_env: str
    address: str | None  # None until provisioning tells (EC2)
    ssh: SshSettings | None
    state_dir: str | None  # None: the environment's default
    max_parallel: int
    compression: str
    profile: tuple[str, ...]  # package names installed at machine level
    keys: dict[str, KeySpec]  # where secrets come from; never their values
    properties: dict[str, Any]
    provider: dict[str, Any]  # the ec2:/container: settings
    closure: tuple[str, ...]  # every store path the machine needs, sorted

    @property
    def display_address(self) -> str:
        return self.address or KNOWN_AFTER_APPLY

    @property
    def location(self) -> str:
        return location_of(self.target_env, self.state_dir, self.ssh)

    @property
    def connection(self) -> dict[str, Any]:
        """How to reach it, recorded so a machine removed from the model can still be
        reached to take its instances down."""
        return {
            "targetEnv": self.target_env,
            "stateDir": self.state_dir,
            "ssh": self.ssh.model_dump() if self.ssh else None,
        }


@dataclass(frozen=True)
class Received:
    """What an instance is told about one dependency or connection (SPEC §2.5)."""

    host: str
    port: int | None
    path: str | None  # sqlite-database: the database file, relative to the deployment folder
    hosts: tuple[str, ...]  # host[:port] of every instance, own machine first

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "path": self.path, "hosts": list(self.hosts)}


@dataclass(frozen=True)
class DesiredInstance:
    key: str  # "service@machine"
    service: str
    machine: str
    container: str
    type: str
    package: str  # package name
    package_path: str  # its store path name
    command: str | None
    user: str | None
    port: int | None
    env: dict[str, str]
    health: HealthCheck | None
    depends_on: tuple[str, ...]
    connects_to: tuple[str, ...]
    activates_after: tuple[str, ...]
    receives: dict[str, Received]
    properties: dict[str, Any]
    identity: str
    inputs: dict[str, str]  # what the identity is made of, for "why did it change"

    @property
    def stateful(self) -> bool:
        return self.type in STATEFUL_TYPES


@dataclass(frozen=True)
class RolloutPolicy:
    """How a service's instances are replaced (SPEC §9): at most `max_unavailable` (a
    count, or a percentage of the service's instances) down at once, each new one
    healthy for `min_ready` seconds before the next batch."""

    max_unavailable: str = "25%"
    min_ready: float = 0.0


@dataclass(frozen=True)
class DesiredState:
    deployment: str
    revision: Revision | None
    packages: dict[str, StorePackage]
    machines: dict[str, DesiredMachine]
    instances: dict[str, DesiredInstance]
    # service → services it must come after (dependsOn + activatesAfter), deployed ones only
    service_order: dict[str, tuple[str, ...]]
    digests: dict[str, str]
    allocations: dict[str, str] = field(default_factory=dict)
    rollouts: dict[str, RolloutPolicy] = field(default_factory=dict)  # by service
    move_state: frozenset[str] = frozenset()  # process/wrapper services moved with their state
    # placement by policy (SPEC §10): the instances it placed, why each one of them (and
    # each it took away from a machine, by its recorded key) is where it is, what the plan
    # must say (fewer replicas than asked, state left on a failed machine) or refuse
    placed_by_policy: frozenset[str] = frozenset()
    placement_reasons: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    blockers: tuple[str, ...] = ()
    failed_machines: frozenset[str] = frozenset()  # left out of placement
