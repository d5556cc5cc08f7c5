"""The commands on instances, each through the table of activation types."""

from __future__ import annotations

import os
import time
from typing import Any

from . import wrapper
from .kinds import TYPES, Kind, kind
from .layout import Deployment
from .request import Failure, Instance, abs_path, bad, name_field, req_obj, req_str


def cmd_activate(req: dict[str, Any]) -> dict[str, Any]:
    dep = Deployment(req)
    identity = req_str(req, "identity")
    inst = Instance(req_obj(req, "instance"), full=True)
    activate = kind(inst).activate
    dep.ensure()
    return activate(dep, inst, identity)


def cmd_deactivate(req: dict[str, Any]) -> dict[str, Any]:
    dep = Deployment(req)
    inst = Instance(req_obj(req, "instance"), full=False)
    return kind(inst).deactivate(dep, inst)


def cmd_status(req: dict[str, Any]) -> dict[str, Any]:
    dep = Deployment(req)
    raw = req.get("instances")
    if not isinstance(raw, list):
        bad("'instances' must be a list")
    result: dict[str, Any] = {}
    for item in raw:
        inst = Instance(item, full=False)
        result[inst.key] = kind(inst).status(dep, inst)
    return {"instances": result}


def cmd_wrapper(req: dict[str, Any]) -> dict[str, Any]:
    """`lock` or `unlock` of a wrapper instance: a non-zero exit of `lock` refuses it."""
    dep = Deployment(req)
    inst = Instance(req_obj(req, "instance"), full=True)
    action = req_str(req, "action")
    if inst.type != "wrapper" or action not in ("lock", "unlock"):
        bad("'action' must be lock or unlock, of a wrapper instance")
    return wrapper.run(dep.ensure(), inst, action)


def stateful(req: dict[str, Any]) -> tuple[Deployment, str, Instance | None, Kind]:
    """The deployment, service, instance and kind of a snapshot or restore: the kind of
    the instance if the request names one (a wrapper does its own), else a database."""
    dep = Deployment(req)
    service = name_field(req, "service")
    if "instance" not in req:
        return dep, service, None, TYPES["sqlite-database"]
    inst = Instance(req_obj(req, "instance"), full=True)
    found = kind(inst)
    if found.snapshot is None or found.restore is None:
        bad(f"{inst.key}: a {inst.type} keeps no state to snapshot or restore")
    return dep, service, inst, found


def cmd_snapshot(req: dict[str, Any]) -> dict[str, Any]:
    dep, service, inst, found = stateful(req)
    assert found.snapshot is not None
    path = os.path.join(dep.root, "snapshots", snapshot_name(service))
    return found.snapshot(dep, service, inst, path)


def cmd_restore(req: dict[str, Any]) -> dict[str, Any]:
    dep, service, inst, found = stateful(req)
    assert found.restore is not None
    source = abs_path(req, "from")
    if not os.path.isfile(source):
        raise Failure(f"no snapshot at {source}")
    dep.ensure()
    return found.restore(dep, service, inst, source)


def snapshot_name(service: str) -> str:
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    return f"{service}-{stamp}"
