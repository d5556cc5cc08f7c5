"""Activation type `wrapper`: the package's `bin/wrapper` does the work, called as
`wrapper activate` (also deactivate, lock, unlock, snapshot, restore, health)."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from .files import file_size, tail, utc_stamp
from .layout import Deployment
from .processes import child_env, run_captured
from .request import Failure, Instance, bad

HEALTH_TIMEOUT = 30.0


def run(
    dep: Deployment, inst: Instance, action: str, extra: dict[str, str] | None = None
) -> dict[str, Any]:
    if inst.package is None:
        bad(f"{inst.key}: a wrapper needs its package")
    wrapper = os.path.join(inst.package, "bin", "wrapper")
    os.makedirs(dep.instance_dir(inst.service), exist_ok=True)
    os.makedirs(dep.state(inst.service), exist_ok=True)
    log_path = os.path.join(dep.instance_dir(inst.service), "log")
    offset = file_size(log_path)
    with open(log_path, "ab") as log:
        log.write(f"--- reconciler: {utc_stamp(time.time())} {wrapper} {action}\n".encode())
        log.flush()
        try:
            # output to the log file, not a pipe: a daemon it starts may keep its stdout
            code = subprocess.call(
                [wrapper, action],
                env=child_env({**inst.env, **(extra or {})}),
                cwd=dep.state(inst.service),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            raise Failure(
                f"{inst.key}: cannot run {wrapper}: {e}", tail(log_path, offset)
            ) from None
    if code != 0:
        raise Failure(
            f"{inst.key}: wrapper {action} exited with status {code}", tail(log_path, offset)
        )
    return {}


def activate(dep: Deployment, inst: Instance, identity: str) -> dict[str, Any]:
    dep.write_config(inst, identity)
    return run(dep, inst, "activate")


def deactivate(dep: Deployment, inst: Instance) -> dict[str, Any]:
    return run(dep, inst, "deactivate")


def status(dep: Deployment, inst: Instance) -> dict[str, Any]:
    config = dep.recorded_config(inst.service)
    identity = config.get("identity")
    result: dict[str, Any] = {
        "state": "missing",
        "pid": None,
        "identity": identity if isinstance(identity, str) else None,
        "healthy": None,
    }
    package = inst.package or config.get("package")
    wrapper = os.path.join(package, "bin", "wrapper") if isinstance(package, str) else None
    if wrapper is None or not os.path.isfile(wrapper):
        return result
    try:
        code, _ = run_captured(
            [wrapper, "health"],
            dep.recorded_env(inst.service),
            dep.cwd(inst.service),
            HEALTH_TIMEOUT,
        )
    except OSError:
        code = None
    result["state"] = "active" if code == 0 else "dead"
    result["healthy"] = code == 0
    return result


def snapshot(dep: Deployment, service: str, inst: Instance | None, path: str) -> dict[str, Any]:
    """The wrapper writes its own snapshot to $RECONCILER_SNAPSHOT."""
    assert inst is not None  # a wrapper is known by its instance
    dep.ensure()
    run(dep, inst, "snapshot", {"RECONCILER_SNAPSHOT": path})
    if not os.path.isfile(path):
        raise Failure(f"{inst.key}: wrapper snapshot wrote no file to $RECONCILER_SNAPSHOT")
    return {"path": path}


def restore(dep: Deployment, service: str, inst: Instance | None, source: str) -> dict[str, Any]:
    """The wrapper restores from $RECONCILER_SNAPSHOT itself."""
    assert inst is not None  # a wrapper is known by its instance
    return run(dep, inst, "restore", {"RECONCILER_SNAPSHOT": source})
