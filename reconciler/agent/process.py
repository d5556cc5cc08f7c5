"""Activation type `process`: `command` started detached (its own session and process
group), logging to the instance folder, passing its health check within the timeout;
stopped with SIGTERM to the group, SIGKILL after 10 s."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any, NoReturn

from .files import dumps, file_size, read_json, remove, tail, utc_stamp, write_atomic
from .health import check
from .layout import Deployment
from .processes import RunAs, alive, child_env, proc_stat, stop_group, stop_recorded
from .request import Failure, Instance, bad

POLL = 0.1  # health check interval, after the first seconds
FAST_POLL = 0.02  # ...and during them: most services come up within a second or two
FAST_FOR = 5.0
NO_HEALTH_WAIT = 0.5  # without a health check: the process must still live after this
STATUS_PROBE_TIMEOUT = 2.0  # one probe in `status`


class PidRecord:
    def __init__(self, pid: int, starttime: int | None, identity: str | None) -> None:
        self.pid = pid
        self.starttime = starttime
        self.identity = identity

    @property
    def alive(self) -> bool:
        return alive(self.pid, self.starttime)


def pid_path(dep: Deployment, service: str) -> str:
    return os.path.join(dep.instance_dir(service), "pid.json")


def read_pid(dep: Deployment, service: str) -> PidRecord | None:
    path = pid_path(dep, service)
    try:
        raw = read_json(path)
    except Failure:
        raw = None
        remove(path)  # a torn record: nothing we could safely signal
    if not isinstance(raw, dict) or not isinstance(raw.get("pid"), int) or raw["pid"] <= 0:
        return None
    starttime = raw.get("starttime")
    identity = raw.get("identity")
    return PidRecord(
        raw["pid"],
        starttime if isinstance(starttime, int) else None,
        identity if isinstance(identity, str) else None,
    )


def start(dep: Deployment, inst: Instance, identity: str, log_path: str) -> subprocess.Popen[bytes]:
    """Start the command detached, output appended to the log; record its pid."""
    assert inst.package is not None and inst.command is not None
    run_as = RunAs(inst.user, inst.key)
    state = dep.state(inst.service)
    os.makedirs(dep.instance_dir(inst.service), exist_ok=True)
    os.makedirs(state, exist_ok=True)
    run_as.chown(state)
    dep.write_config(inst, identity)
    exe = os.path.join(inst.package, inst.command)
    offset = file_size(log_path)
    with open(log_path, "ab") as log:
        log.write(
            f"--- reconciler: {utc_stamp(time.time())} starting {exe}"
            f" (identity {identity}){run_as.note}\n".encode()
        )
        log.flush()
        try:
            child = subprocess.Popen(
                [exe],
                env=child_env(inst.env),
                cwd=state,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
                start_new_session=True,
                user=run_as.uid,
                group=run_as.gid,
                extra_groups=run_as.groups,
            )
        except (OSError, subprocess.SubprocessError) as e:
            log.write(f"--- reconciler: could not start {exe}: {e}\n".encode())
            log.flush()
            raise Failure(f"could not start {exe}: {e}", tail(log_path, offset)) from None
    stat = proc_stat(child.pid)  # not reaped yet, so readable even if it already exited
    record = {
        "pid": child.pid,
        "starttime": stat.starttime if stat is not None else None,
        "identity": identity,
    }
    write_atomic(pid_path(dep, inst.service), dumps(record))
    return child


def activate(dep: Deployment, inst: Instance, identity: str) -> dict[str, Any]:
    if not inst.command:
        bad(f"{inst.key}: a process needs a command")
    old = read_pid(dep, inst.service)
    if old is not None:
        if old.alive and old.identity == identity:
            return {"already": True, "pid": old.pid}
        stop_recorded(old.pid, old.starttime)
        remove(pid_path(dep, inst.service))

    log_path = os.path.join(dep.instance_dir(inst.service), "log")
    offset = file_size(log_path)
    child = start(dep, inst, identity, log_path)

    def fail(why: str) -> NoReturn:
        stop_group(child.pid, child)
        # only our own record: an interrupted attempt's rollback may have started the old
        # version meanwhile, and its record must stay
        current = read_json(pid_path(dep, inst.service))
        if isinstance(current, dict) and current.get("pid") == child.pid:
            remove(pid_path(dep, inst.service))
        with open(log_path, "ab") as log:
            log.write(
                f"--- reconciler: {utc_stamp(time.time())} activation failed: {why}\n".encode()
            )
        raise Failure(f"{inst.key}: {why}", tail(log_path, offset))

    def exited(why: str = "") -> None:
        code = child.poll()
        if code is not None:
            fail(f"the process exited with status {code}" + (f" ({why})" if why else ""))

    if inst.health is None:
        deadline = time.monotonic() + NO_HEALTH_WAIT
        while time.monotonic() < deadline:
            exited()
            time.sleep(0.05)
        exited()
        return {"pid": child.pid}

    health = inst.health
    started = time.monotonic()
    deadline = started + health.timeout
    state = dep.state(inst.service)
    why = ""
    while True:
        exited(why)
        remaining = deadline - time.monotonic()
        ok, why = check(
            health, inst.host, inst.port, inst.env, state, min(2.0, remaining), child.pid
        )
        if ok:
            exited()  # answered, but the process is gone: not healthy
            return {"pid": child.pid}
        if time.monotonic() >= deadline:
            fail(f"health check did not pass within {health.timeout:g} s: {why}")
        # often at first, so a service that is up is seen within ms; then every POLL
        fast = time.monotonic() - started < FAST_FOR
        time.sleep(max(0.0, min(FAST_POLL if fast else POLL, deadline - time.monotonic())))


def deactivate(dep: Deployment, inst: Instance) -> dict[str, Any]:
    record = read_pid(dep, inst.service)
    stopped = False
    if record is not None:
        stopped = stop_recorded(record.pid, record.starttime)
        remove(pid_path(dep, inst.service))
    return {"stopped": stopped}


def status(dep: Deployment, inst: Instance) -> dict[str, Any]:
    record = read_pid(dep, inst.service)
    if record is None:
        return {"state": "missing", "pid": None, "identity": None, "healthy": None}
    if not record.alive:
        return {"state": "dead", "pid": record.pid, "identity": record.identity, "healthy": None}
    healthy = None
    if inst.health is not None:
        healthy, _ = check(
            inst.health,
            inst.host,
            inst.port,
            dep.recorded_env(inst.service),
            dep.cwd(inst.service),
            min(STATUS_PROBE_TIMEOUT, inst.health.timeout),
            record.pid,
        )
    return {"state": "active", "pid": record.pid, "identity": record.identity, "healthy": healthy}
