"""Provisioners of the machines reconciler makes itself (SPEC §3 step 1): `ec2` and
`container`. See base.py for the interface, namespace_machine.py for
what a container is made of, and state/provisioning.py for the provisioning record."""

from __future__ import annotations

from pathlib import Path

from reconciler.provision.base import (
    MISSING,
    PENDING,
    RUNNING,
    STOPPED,
    TERMINATED,
    Provisioned,
    Provisioner,
    ProvisionError,
    Recorder,
)

__all__ = [
    "MISSING",
    "PENDING",
    "RUNNING",
    "STOPPED",
    "TERMINATED",
    "ProvisionError",
    "Provisioned",
    "Provisioner",
    "Recorder",
    "provisioner_for",
]


def provisioner_for(
    target_env: str, state_root: Path, *, container_subnet: str | None = None
) -> Provisioner:
    """The provisioner of a target environment. `state_root` is the state DB's folder
    (containers keep their disks and keys there); `container_subnet` is the recorded
    `container-subnet` allocation (default 10.213.0.0/16)."""
    # imported here: boto3 costs ~0.3 s to import, and most commands provision nothing
    if target_env == "ec2":
        from reconciler.provision.ec2 import Ec2Provisioner

        return Ec2Provisioner()
    if target_env == "container":
        from reconciler.provision.container import DEFAULT_SUBNET, ContainerProvisioner

        return ContainerProvisioner(state_root, container_subnet or DEFAULT_SUBNET)
    raise ValueError(f"targetEnv {target_env} is not provisioned (only ec2 and container are)")
