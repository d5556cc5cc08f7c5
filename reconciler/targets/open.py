"""Open the target of a machine of the desired state, by its targetEnv."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import UserError
from reconciler.targets.base import Target
from reconciler.targets.local import LocalTarget

if TYPE_CHECKING:  # asyncssh (0.15 s of imports) only when an SSH machine is reached
    from reconciler.targets.ssh import HostKeyStore

DEFAULT_STATE_DIR = "/var/lib/reconciler"


def local_state_dir(state_root: Path, machine: str) -> str:
    """A local machine's folder: `machines/<name>` beside the state DB (SPEC §2.3)."""
    return str((state_root / "machines" / machine).resolve())


def open_target(
    name: str, connection: Mapping[str, Any], state_root: Path, host_keys: HostKeyStore
) -> Target:
    """A machine's target from its connection (DesiredMachine.connection, or as recorded)."""
    env, state_dir, ssh = connection["targetEnv"], connection.get("stateDir"), connection.get("ssh")
    if env == "local":
        return LocalTarget(name, state_dir or local_state_dir(state_root, name))
    if env in ("ssh", "container", "ec2") and ssh and ssh.get("host"):
        from reconciler.targets.ssh import SshEndpoint, SshTarget

        return SshTarget(name, state_dir or DEFAULT_STATE_DIR, SshEndpoint.of(ssh), host_keys)
    if env in ("container", "ec2"):
        raise UserError(
            f"machine {name}: the {env} machine is not provisioned yet; "
            "`reconciler apply` provisions it first (or `apply --provision-only`)"
        )
    raise UserError(f"machine {name}: targetEnv ssh needs ssh.host (or address) to reach it")


@asynccontextmanager
async def opened(
    connections: Mapping[str, Mapping[str, Any]], state_root: Path, host_keys: HostKeyStore
) -> AsyncIterator[dict[str, Target]]:
    """The targets of these machines (name → connection), closed however the block ends."""
    targets = {
        name: open_target(name, connection, state_root, host_keys)
        for name, connection in sorted(connections.items())
    }
    try:
        yield targets
    finally:
        await asyncio.gather(*(t.close() for t in targets.values()), return_exceptions=True)
