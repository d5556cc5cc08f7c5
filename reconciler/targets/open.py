"""Open the target of a machine of the desired state, by its targetEnv."""

from __future__ import annotations

from pathlib import Path

from reconciler.desired.state import DesiredMachine
from reconciler.errors import UserError
from reconciler.targets.base import Target
from reconciler.targets.local import LocalTarget
from reconciler.targets.ssh import HostKeyStore, SshEndpoint, SshTarget

DEFAULT_STATE_DIR = "/var/lib/reconciler"


def local_state_dir(state_root: Path, machine: str) -> str:
    """A local machine's folder: `machines/<name>` beside the state DB (SPEC §2.3)."""
    return str((state_root / "machines" / machine).resolve())


def open_target(machine: DesiredMachine, state_root: Path, host_keys: HostKeyStore) -> Target:
    if machine.target_env == "local":
        return LocalTarget(
            machine.name, machine.state_dir or local_state_dir(state_root, machine.name)
        )
    if machine.target_env == "ssh":
        assert machine.ssh is not None and machine.ssh.host
        s = machine.ssh
        endpoint = SshEndpoint(s.host or "", s.port, s.user, s.identityFile, s.hostKey)
        return SshTarget(machine.name, machine.state_dir or DEFAULT_STATE_DIR, endpoint, host_keys)
    raise UserError(
        f"machine {machine.name}: targetEnv {machine.target_env} cannot be deployed to yet "
        "(provisioning lands in a later release); ssh and local machines can"
    )
