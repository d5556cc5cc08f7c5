"""What every provisioner offers (SPEC §3 step 1): create-or-find a machine, wait until it
is ready, destroy it, observe it.

Provisioners are synchronous (boto3 is) and thread safe: `apply` runs several machines
at once, each in a thread (`asyncio.to_thread`). Every provider call is preceded by a
record in the `provisioning` table (through a `Recorder`), so a process killed half-way
finds its machine again instead of making a second one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from reconciler.errors import ProvisionError as ProvisionError  # where providers raise it from

if TYPE_CHECKING:  # only stdlib at run time: scripts/testhosts runs on the system python
    from reconciler.desired.state import DesiredMachine

# States a provisioner reports (EC2's own instance states, plus ours)
RUNNING = "running"
PENDING = "pending"
STOPPED = "stopped"
TERMINATED = "terminated"
MISSING = "missing"  # nothing found where the record says a machine is


@dataclass(frozen=True)
class Provisioned:
    provider_id: str  # EC2: "<region>/<instance id>"; container: the netns name
    state: str  # "running", "pending", "stopped", "terminated", ...
    address: str | None  # the private address services listen on
    ssh_host: str | None  # where SSH goes (EC2: the public address when there is one)
    ssh_port: int
    ssh_user: str
    identity_file: str | None  # private key to use (containers: one reconciler generates)
    host_key: str | None  # "ssh-ed25519 AAAA..." when known; None: trust on first use


class Recorder(Protocol):
    """The provisioning record of one deployment (over SQLite: state/provisioning.py)."""

    def token(self, machine: str, provider: str) -> str:
        """The recorded idempotency token; records (and commits) a new one first if none."""
        ...

    def step(self, machine: str, state: str, provider_id: str | None = None, **detail: Any) -> None:
        """Record where provisioning got to; `detail` is merged into the recorded detail."""
        ...

    def forget(self, machine: str) -> None:
        """The machine is gone: drop its record (and so its token)."""
        ...

    def detail(self, machine: str) -> dict[str, Any]:
        """The recorded detail ({} without a record): e.g. the region of an EC2 create
        interrupted before its instance id was recorded, for destroy to look there."""
        ...


class Provisioner(Protocol):
    def ensure(self, deployment: str, machine: DesiredMachine, recorder: Recorder) -> Provisioned:
        """Create or find the machine, then wait until it is ready. Idempotent: a machine
        made before (even by a process killed right after the create call) is found again,
        never duplicated."""
        ...

    def destroy(
        self, deployment: str, machine: str, provider_id: str | None, recorder: Recorder
    ) -> None:
        """Terminate the machine and wait until it is gone; idempotent."""
        ...

    def observe(self, deployment: str, machine: str, provider_id: str) -> str:
        """The machine's current state, for `status` (MISSING when nothing is found)."""
        ...
