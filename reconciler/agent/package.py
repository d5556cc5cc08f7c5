"""Activation type `package`: only its closure is installed (by the transfer); activation
records it, deactivation has nothing to stop."""

from __future__ import annotations

import os
from typing import Any

from .layout import Deployment
from .request import Instance


def activate(dep: Deployment, inst: Instance, identity: str) -> dict[str, Any]:
    dep.write_config(inst, identity)
    return {}


def deactivate(dep: Deployment, inst: Instance) -> dict[str, Any]:
    return {}


def status(dep: Deployment, inst: Instance) -> dict[str, Any]:
    config = dep.recorded_config(inst.service)
    package = inst.package or config.get("package")
    identity = config.get("identity")
    present = isinstance(package, str) and os.path.exists(package)
    return {
        "state": "active" if present else "missing",
        "pid": None,
        "identity": identity if isinstance(identity, str) else None,
        "healthy": None,
    }
