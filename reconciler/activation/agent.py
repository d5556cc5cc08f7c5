"""The activation agent: runs ON EACH TARGET MACHINE, shipped there as this one file.

    python3 agent.py COMMAND < request.json

One JSON request on stdin, exactly one JSON object on stdout. Exit status 0: success;
1: the operation failed (`{"error": …, "log": <instance log tail, when there is one>}`);
2: bad request (`{"error": "bad request: …"}`). Never a traceback.

Commands: activate, deactivate, status, lock, unlock, snapshot, restore, switch-profile,
read-manifest (see SPEC.md §2.5 and §3 for the layout under stateDir).

Constraints: python 3.9+ on the target, standard library only, a single file, no imports
from `reconciler`. Linux: processes are identified by pid plus the start time from
/proc/<pid>/stat (field 22), since pids are reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
KILL_WAIT = 5.0  # seconds to wait for a SIGKILLed group to vanish
POLL = 0.1  # health check interval, after the first seconds
FAST_POLL = 0.02  # ...and during them: most services come up within a second or two
FAST_FOR = 5.0
NO_HEALTH_WAIT = 0.5  # without a health check: the process must still live after this
STATUS_PROBE_TIMEOUT = 2.0  # one probe in `status`
WRAPPER_HEALTH_TIMEOUT = 30.0
LOG_TAIL_LINES = 20
TYPES = ("process", "sqlite-database", "wrapper", "package")
MIGRATION = re.compile(r"^(\d+)-.*\.sql$")
MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS _reconciler_migrations(name TEXT PRIMARY KEY, applied_at TEXT)"
)


# --- errors ------------------------------------------------------------------------


class BadRequest(Exception):
    """The request is malformed: exit 2."""


class Failure(Exception):
    """The operation failed: exit 1, with the log tail and any extra fields."""

    def __init__(self, message: str, log: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.log = log
        self.extra = extra


def bad(message: str) -> NoReturn:
    raise BadRequest(message)


# --- request fields ----------------------------------------------------------------


def req_obj(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        bad(f"{key!r} must be an object")
    return value


def req_str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        bad(f"{key!r} must be a non-empty string")
    return value


def opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        bad(f"{key!r} must be a string or null")
    return value


def opt_int(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        bad(f"{key!r} must be an integer or null")
    return value


def seconds(value: Any, key: str, default: float) -> float:
    """A duration: a number of seconds, or a string like "10s", "500ms", "2m"."""
    if value is None:
        return default
    if isinstance(value, bool):
        bad(f"{key!r} must be a duration")
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", value)
        if not m:
            bad(f"{key!r} must be a duration, not {value!r}")
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
        result = float(m.group(1)) * scale
    else:
        bad(f"{key!r} must be a duration")
    if result < 0:
        bad(f"{key!r} must not be negative")
    return result


def name_field(obj: dict[str, Any], key: str) -> str:
    """A name used as one path component (deployment, service)."""
    value = req_str(obj, key)
    if "/" in value or "\0" in value or value in (".", ".."):
        bad(f"{key!r} is not a valid name: {value!r}")
    return value


def abs_path(obj: dict[str, Any], key: str) -> str:
    value = req_str(obj, key)
    if not os.path.isabs(value) or "\0" in value:
        bad(f"{key!r} must be an absolute path")
    return os.path.normpath(value)


class Health:
    def __init__(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            bad("'health' must be an object or null")
        self.http = opt_str(raw, "http")
        tcp = raw.get("tcp")
        if tcp is not None and not isinstance(tcp, bool):
            bad("'health.tcp' must be a boolean or null")
        self.tcp = bool(tcp)
        self.command = opt_str(raw, "command")
        self.timeout = seconds(raw.get("timeout"), "health.timeout", 10.0)
        if self.http is not None and not self.http.startswith("/"):
            self.http = "/" + self.http

    def empty(self) -> bool:
        return self.http is None and not self.tcp and self.command is None

    def needs_port(self) -> bool:
        return self.http is not None or self.tcp


class Instance:
    """An instance as the requests describe it. `full`: for activate (package required,
    and a command for a process); otherwise package and command are optional."""

    def __init__(self, raw: Any, full: bool) -> None:
        if not isinstance(raw, dict):
            bad("an instance must be an object")
        self.raw: dict[str, Any] = raw
        self.key = req_str(raw, "key")
        self.service = name_field(raw, "service")
        type_ = req_str(raw, "type")
        if type_ not in TYPES:
            bad(f"unknown instance type {type_!r}")
        self.type = type_
        self.package: str | None = abs_path(raw, "package") if full or raw.get("package") else None
        self.command = opt_str(raw, "command")
        self.user = opt_str(raw, "user") or None
        env = raw.get("env")
        if env is None:
            env = {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            bad("'env' must map strings to strings")
        self.env: dict[str, str] = env
        health = None if raw.get("health") is None else Health(raw.get("health"))
        # a health object naming no check is no health check
        self.health = health if health is not None and not health.empty() else None
        self.host = opt_str(raw, "host") or "127.0.0.1"
        self.port = opt_int(raw, "port")
        self.identity = opt_str(raw, "identity")
        if self.health is not None and self.health.needs_port() and self.port is None:
            bad(f"{self.key}: an http or tcp health check needs a port")
        if full and self.type == "process" and not self.command:
            bad(f"{self.key}: a process needs a command")


# --- files -------------------------------------------------------------------------


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove(path: str) -> bool:
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write a temporary file next to `path`, fsync it, rename it over `path`."""
    folder, base = os.path.split(path)
    tmp = os.path.join(folder, f".{base}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise
    fsync_dir(folder)


def dumps(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def read_json(path: str) -> Any:
    """The JSON in `path`; None if there is no such file; Failure if unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        return json.loads(data.decode())
    except ValueError as e:
        raise Failure(f"{path}: not valid JSON ({e})") from None


def tail(path: str, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of `path` from byte `offset` on ("" if none)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(offset, size - 64 * 1024)
            f.seek(start)
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def utc_stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# --- layout ------------------------------------------------------------------------


class Deployment:
    """`stateDir/deployments/<deployment>/` and its folders."""

    def __init__(self, req: dict[str, Any]) -> None:
        self.state_dir = abs_path(req, "stateDir")
        self.name = name_field(req, "deployment")
        self.root = os.path.join(self.state_dir, "deployments", self.name)

    def ensure(self) -> Deployment:
        for sub in ("profiles", "instances", "state", "snapshots"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        keys = os.path.join(self.root, "keys")
        os.makedirs(keys, mode=0o700, exist_ok=True)
        os.chmod(keys, 0o700)
        return self

    def instance_dir(self, service: str) -> str:
        return os.path.join(self.root, "instances", service)

    def state(self, service: str) -> str:
        return os.path.join(self.root, "state", service)

    def db(self, service: str) -> str:
        return os.path.join(self.state(service), f"{service}.sqlite")


def write_config(dep: Deployment, inst: Instance, identity: str | None) -> None:
    folder = dep.instance_dir(inst.service)
    os.makedirs(folder, exist_ok=True)
    config = dict(inst.raw)
    config["identity"] = identity
    write_atomic(os.path.join(folder, "config.json"), dumps(config))


def recorded_config(dep: Deployment, service: str) -> dict[str, Any]:
    try:
        config = read_json(os.path.join(dep.instance_dir(service), "config.json"))
    except Failure:
        return {}
    return config if isinstance(config, dict) else {}


def child_env(env: dict[str, str]) -> dict[str, str]:
    result = dict(env)
    result.setdefault("PATH", DEFAULT_PATH)
    return result


class RunAs:
    """Whom to run an instance's process as: `user` if set and we are root, else us."""

    def __init__(self, user: str | None) -> None:
        self.uid: int | None = None
        self.gid: int | None = None
        self.groups: list[int] | None = None
        self.note = ""
        if not user:
            return
        if os.geteuid() != 0:
            if pwd.getpwuid(os.geteuid()).pw_name != user:
                self.note = f" (user {user} ignored: the agent does not run as root)"
            return
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise Failure(f"no such user on this machine: {user}") from None
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        self.groups = os.getgrouplist(user, entry.pw_gid)

    def chown(self, path: str) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


# --- processes ---------------------------------------------------------------------


class ProcStat:
    def __init__(self, state: str, pgrp: int, starttime: int) -> None:
        self.state = state
        self.pgrp = pgrp
        self.starttime = starttime

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X", "x")


def proc_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    # "pid (comm) state ppid pgrp …": comm may hold spaces and parentheses
    fields = data[data.rfind(")") + 2 :].split()
    try:
        return ProcStat(fields[0], int(fields[2]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def alive(pid: int, starttime: int | None) -> bool:
    """pid is a live (non-zombie) process started at `starttime`."""
    stat = proc_stat(pid)
    return stat is not None and not stat.zombie and stat.starttime == starttime


def group_members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of process group `pgid`."""
    members: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return members
    for entry in entries:
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None and stat.pgrp == pgid and not stat.zombie:
                members.append(int(entry))
    return members


def killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def wait_group_gone(pgid: int, seconds_: float, child: subprocess.Popen[bytes] | None) -> bool:
    deadline = time.monotonic() + seconds_
    while True:
        if child is not None:
            child.poll()
        if not group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def stop_group(pgid: int, child: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the group (and SIGCONT, for stopped ones), SIGKILL after STOP_GRACE."""
    if group_members(pgid):
        killpg(pgid, signal.SIGTERM)
        killpg(pgid, signal.SIGCONT)
        if not wait_group_gone(pgid, STOP_GRACE, child):
            killpg(pgid, signal.SIGKILL)
            if not wait_group_gone(pgid, KILL_WAIT, child):
                raise Failure(f"process group {pgid} survived SIGKILL")
    if child is not None:
        child.wait()


def stop_recorded(pid: int, starttime: int | None) -> bool:
    """Stop the process group a pid.json names; whether its leader was alive.

    The group is signalled only if it is provably ours: the leader is alive with the
    recorded start time, or a zombie with it, or gone entirely (then its pid is not in
    use, so no other group can carry that id, and leftover members are ours). A pid now
    used by another process is never touched."""
    stat = proc_stat(pid)
    if stat is not None and stat.starttime != starttime:
        return False
    was_alive = stat is not None and not stat.zombie
    stop_group(pid)
    return was_alive


class PidRecord:
    def __init__(self, pid: int, starttime: int | None, identity: str | None) -> None:
        self.pid = pid
        self.starttime = starttime
        self.identity = identity

    @property
    def alive(self) -> bool:
        return alive(self.pid, self.starttime)


def read_pid(dep: Deployment, service: str) -> PidRecord | None:
    path = os.path.join(dep.instance_dir(service), "pid.json")
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


# --- health ------------------------------------------------------------------------


def probe(
    health: Health, host: str, port: int | None, env: dict[str, str], cwd: str, timeout: float
) -> tuple[bool, str]:
    """One round of every configured check; (passed, why not)."""
    timeout = max(timeout, 0.05)
    if health.http is not None and port is not None:
        import http.client

        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", health.http, headers={"Connection": "close"})
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException) as e:
            return False, f"GET http://{host}:{port}{health.http}: {e}"
        finally:
            conn.close()
        if not 200 <= status < 400:
            return False, f"GET http://{host}:{port}{health.http}: HTTP {status}"
    if health.tcp and port is not None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e:
            return False, f"connect {host}:{port}: {e}"
    if health.command is not None:
        try:
            code, output = run_captured(["sh", "-c", health.command], env, cwd, timeout)
        except OSError as e:
            return False, f"health command {health.command!r}: {e}"
        if code != 0:
            last = output.strip().splitlines()[-1:] or [""]
            why = "timed out" if code is None else f"exit status {code}"
            return False, f"health command {health.command!r}: {why} {last[0]}".rstrip()
    return True, ""


def run_captured(
    argv: list[str], env: dict[str, str], cwd: str, timeout: float | None
) -> tuple[int | None, str]:
    """Run in a new session, output captured; (exit status or None on timeout, output).
    On timeout the whole group is killed, so leftover children cannot hold the pipe."""
    proc = subprocess.Popen(
        argv,
        env=child_env(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        finished = proc.poll()  # it may be done, a child of it holding the pipe
        killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return finished, out.decode("utf-8", "replace")
    return proc.returncode, out.decode("utf-8", "replace")


# --- process -----------------------------------------------------------------------


def activate_process(dep: Deployment, inst: Instance, identity: str) -> dict[str, Any]:
    assert inst.package is not None and inst.command is not None
    inst_dir = dep.instance_dir(inst.service)
    state = dep.state(inst.service)
    pid_path = os.path.join(inst_dir, "pid.json")
    log_path = os.path.join(inst_dir, "log")

    old = read_pid(dep, inst.service)
    if old is not None:
        if old.alive and old.identity == identity:
            return {"already": True, "pid": old.pid}
        stop_recorded(old.pid, old.starttime)
        remove(pid_path)

    run_as = RunAs(inst.user)
    os.makedirs(inst_dir, exist_ok=True)
    os.makedirs(state, exist_ok=True)
    run_as.chown(state)
    write_config(dep, inst, identity)
    exe = os.path.join(inst.package, inst.command)
    env = child_env(inst.env)

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
                env=env,
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
    write_atomic(pid_path, dumps(record))

    def fail(why: str) -> NoReturn:
        stop_group(child.pid, child)
        # only our own record: an interrupted attempt's rollback may have started the old
        # version meanwhile, and its record must stay
        current = read_json(pid_path)
        if isinstance(current, dict) and current.get("pid") == child.pid:
            remove(pid_path)
        with open(log_path, "ab") as log:
            log.write(
                f"--- reconciler: {utc_stamp(time.time())} activation failed: {why}\n".encode()
            )
        raise Failure(f"{inst.key}: {why}", tail(log_path, offset))

    def exited() -> str | None:
        code = child.poll()
        return None if code is None else f"the process exited with status {code}"

    if inst.health is None:
        deadline = time.monotonic() + NO_HEALTH_WAIT
        while time.monotonic() < deadline:
            gone = exited()
            if gone:
                fail(gone)
            time.sleep(0.05)
        gone = exited()
        if gone:
            fail(gone)
        return {"pid": child.pid}

    started = time.monotonic()
    deadline = started + inst.health.timeout
    while True:
        gone = exited()
        if gone:
            fail(gone)
        remaining = deadline - time.monotonic()
        ok, why = probe(inst.health, inst.host, inst.port, inst.env, state, min(2.0, remaining))
        if ok:
            gone = exited()
            if gone:  # something else answered, but our process is gone
                fail(gone)
            return {"pid": child.pid}
        if time.monotonic() >= deadline:
            fail(f"health check did not pass within {inst.health.timeout:g} s: {why}")
        # often at first, so a service that is up is seen within ms; then every POLL
        fast = time.monotonic() - started < FAST_FOR
        time.sleep(max(0.0, min(FAST_POLL if fast else POLL, deadline - time.monotonic())))


def deactivate_process(dep: Deployment, inst: Instance) -> dict[str, Any]:
    record = read_pid(dep, inst.service)
    stopped = False
    if record is not None:
        stopped = stop_recorded(record.pid, record.starttime)
        remove(os.path.join(dep.instance_dir(inst.service), "pid.json"))
    return {"stopped": stopped}


def status_process(dep: Deployment, inst: Instance) -> dict[str, Any]:
    record = read_pid(dep, inst.service)
    if record is None:
        return {"state": "missing", "pid": None, "identity": None, "healthy": None}
    if not record.alive:
        return {"state": "dead", "pid": record.pid, "identity": record.identity, "healthy": None}
    healthy = None
    if inst.health is not None:
        env = recorded_config(dep, inst.service).get("env")
        state = dep.state(inst.service)
        healthy, _ = probe(
            inst.health,
            inst.host,
            inst.port,
            env if isinstance(env, dict) else {},
            state if os.path.isdir(state) else "/",
            min(STATUS_PROBE_TIMEOUT, inst.health.timeout),
        )
    return {"state": "active", "pid": record.pid, "identity": record.identity, "healthy": healthy}


# --- sqlite-database ---------------------------------------------------------------


def migrations(package: str) -> list[str]:
    folder = os.path.join(package, "migrations")
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        m = MIGRATION.match(name)
        if m and os.path.isfile(os.path.join(folder, name)):
            found.append((int(m.group(1)), name))
    return [name for _, name in sorted(found)]


def remove_db_files(path: str) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        remove(path + suffix)


def read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise Failure(f"cannot read {what}: {e}") from None
    except UnicodeDecodeError as e:
        raise Failure(f"{what} is not UTF-8: {e}") from None


def create_database(db: str, schema_path: str, run_as: RunAs) -> None:
    """Build the database from schema.sql in a temporary file, then rename it into place:
    there is never a half-made database at `db`."""
    folder, base = os.path.split(db)
    for stale in os.listdir(folder):
        if stale.startswith(f".{base}.tmp-"):
            remove(os.path.join(folder, stale))
    schema = read_text(schema_path, "schema.sql")
    tmp = os.path.join(folder, f".{base}.tmp-{os.getpid()}")
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.executescript(schema)
            if conn.in_transaction:
                conn.execute("COMMIT")
            conn.execute(MIGRATIONS_TABLE)
        finally:
            conn.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        run_as.chown(tmp)
        os.replace(tmp, db)
    except sqlite3.Error as e:
        raise Failure(f"schema.sql failed: {e}") from None
    finally:
        remove_db_files(tmp)
    fsync_dir(folder)


def apply_migrations(db: str, package: str) -> list[str]:
    applied: list[str] = []
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        conn.execute(MIGRATIONS_TABLE)
        done = {row[0] for row in conn.execute("SELECT name FROM _reconciler_migrations")}
        for name in migrations(package):
            if name in done:
                continue
            sql = read_text(os.path.join(package, "migrations", name), f"migration {name}")
            try:
                conn.executescript("BEGIN;\n" + sql + "\n;")
                if not conn.in_transaction:
                    raise sqlite3.OperationalError("the migration ended its own transaction")
                conn.execute(
                    "INSERT INTO _reconciler_migrations(name, applied_at) VALUES (?, ?)",
                    (name, utc_stamp(time.time())),
                )
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise Failure(f"migration {name} failed: {e}", applied=applied) from None
            applied.append(name)
    except sqlite3.Error as e:
        raise Failure(f"{db}: {e}", applied=applied) from None
    finally:
        conn.close()
    return applied


def activate_sqlite(dep: Deployment, inst: Instance, identity: str) -> dict[str, Any]:
    assert inst.package is not None
    state = dep.state(inst.service)
    os.makedirs(state, exist_ok=True)
    run_as = RunAs(inst.user)
    run_as.chown(state)
    write_config(dep, inst, identity)
    db = dep.db(inst.service)
    if not os.path.exists(db):
        create_database(db, os.path.join(inst.package, "schema.sql"), run_as)
    return {"path": db, "applied": apply_migrations(db, inst.package)}


# --- wrapper -----------------------------------------------------------------------


def run_wrapper(
    dep: Deployment, inst: Instance, action: str, extra: dict[str, str] | None = None
) -> dict[str, Any]:
    assert inst.package is not None
    wrapper = os.path.join(inst.package, "bin", "wrapper")
    inst_dir = dep.instance_dir(inst.service)
    state = dep.state(inst.service)
    os.makedirs(inst_dir, exist_ok=True)
    os.makedirs(state, exist_ok=True)
    log_path = os.path.join(inst_dir, "log")
    offset = file_size(log_path)
    with open(log_path, "ab") as log:
        log.write(f"--- reconciler: {utc_stamp(time.time())} {wrapper} {action}\n".encode())
        log.flush()
        try:
            # output to the log file, not a pipe: a daemon it starts may keep its stdout
            code = subprocess.call(
                [wrapper, action],
                env=child_env({**inst.env, **(extra or {})}),
                cwd=state,
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


def status_wrapper(dep: Deployment, inst: Instance, package: str | None) -> dict[str, Any]:
    identity = recorded_config(dep, inst.service).get("identity")
    result: dict[str, Any] = {
        "state": "missing",
        "pid": None,
        "identity": identity if isinstance(identity, str) else None,
        "healthy": None,
    }
    wrapper = os.path.join(package, "bin", "wrapper") if package else None
    if wrapper is None or not os.path.isfile(wrapper):
        return result
    env = recorded_config(dep, inst.service).get("env")
    state = dep.state(inst.service)
    try:
        code, _ = run_captured(
            [wrapper, "health"],
            env if isinstance(env, dict) else {},
            state if os.path.isdir(state) else "/",
            WRAPPER_HEALTH_TIMEOUT,
        )
    except OSError:
        code = None
    result["state"] = "active" if code == 0 else "dead"
    result["healthy"] = code == 0
    return result


# --- commands ----------------------------------------------------------------------


def cmd_activate(req: dict[str, Any]) -> dict[str, Any]:
    dep = Deployment(req)
    identity = req_str(req, "identity")
    inst = Instance(req_obj(req, "instance"), full=True)
    dep.ensure()
    if inst.type == "process":
        return activate_process(dep, inst, identity)
    if inst.type == "sqlite-database":
        return activate_sqlite(dep, inst, identity)
    if inst.type == "wrapper":
        write_config(dep, inst, identity)
        return run_wrapper(dep, inst, "activate")
    write_config(dep, inst, identity)
    return {}


def cmd_deactivate(req: dict[str, Any]) -> dict[str, Any]:
    dep = Deployment(req)
    inst = Instance(req_obj(req, "instance"), full=False)
    if inst.type == "process":
        return deactivate_process(dep, inst)
    if inst.type == "wrapper":
        if inst.package is None:
            bad(f"{inst.key}: a wrapper needs its package")
        return run_wrapper(dep, inst, "deactivate")
    return {}


def cmd_status(req: dict[str, Any]) -> dict[str, Any]:
    dep = Deployment(req)
    raw = req.get("instances")
    if not isinstance(raw, list):
        bad("'instances' must be a list")
    result: dict[str, Any] = {}
    for item in raw:
        inst = Instance(item, full=False)
        if inst.type == "process":
            result[inst.key] = status_process(dep, inst)
            continue
        config = recorded_config(dep, inst.service)
        package = inst.package or config.get("package")
        package = package if isinstance(package, str) else None
        recorded = config.get("identity")
        identity = recorded if isinstance(recorded, str) else None
        if inst.type == "wrapper":
            result[inst.key] = status_wrapper(dep, inst, package)
            continue
        exists = (
            os.path.exists(dep.db(inst.service))
            if inst.type == "sqlite-database"
            else package is not None and os.path.exists(package)
        )
        result[inst.key] = {
            "state": "active" if exists else "missing",
            "pid": None,
            "identity": identity,
            "healthy": None,
        }
    return {"instances": result}


class DirLock:
    """flock on stateDir itself: serializes lease changes by agents on this machine."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY)

    def __enter__(self) -> DirLock:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def read_lease(path: str) -> dict[str, Any] | None:
    """The lease in `path`; None when there is none; {} when it is unreadable."""
    try:
        raw = read_json(path)
    except Failure:
        return {}
    if raw is None and not os.path.exists(path):
        return None
    return raw if isinstance(raw, dict) else {}


def cmd_lock(req: dict[str, Any]) -> dict[str, Any]:
    state_dir = abs_path(req, "stateDir")
    owner = req_str(req, "owner")
    ttl = seconds(req.get("ttl"), "ttl", 60.0)
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, "lock")
    with DirLock(state_dir):
        now = time.time()
        expires = now + ttl
        lease = dumps({"owner": owner, "expires": expires, "host": socket.gethostname()})
        current = read_lease(path)
        if current is None:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                raise Failure("the lease appeared while taking it; try again") from None
            try:
                os.write(fd, lease)
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(state_dir)
            return {"owner": owner, "expires": expires}
        holder = current.get("owner")
        held_until = current.get("expires")
        if holder == owner:
            write_atomic(path, lease)
            return {"owner": owner, "expires": expires, "renewed": True}
        if isinstance(held_until, (int, float)) and held_until > now:
            raise Failure(
                f"held by {holder} until {utc_stamp(held_until)}",
                holder=holder,
                expires=held_until,
            )
        write_atomic(path, lease)
        return {
            "owner": owner,
            "expires": expires,
            "took_over": holder if isinstance(holder, str) else None,
        }


def cmd_unlock(req: dict[str, Any]) -> dict[str, Any]:
    state_dir = abs_path(req, "stateDir")
    owner = req_str(req, "owner")
    path = os.path.join(state_dir, "lock")
    if not os.path.isdir(state_dir):
        return {"released": False, "holder": None}
    with DirLock(state_dir):
        current = read_lease(path)
        if current is not None and current.get("owner") == owner:
            remove(path)
            fsync_dir(state_dir)
            return {"released": True}
        holder = current.get("owner") if current is not None else None
        return {"released": False, "holder": holder if isinstance(holder, str) else None}


def sqlite_copy(source: str, target_dir: str, target_name: str) -> str:
    """Copy the database `source` with the online backup API to a temporary file in
    `target_dir` (for the caller to rename into place as `target_name`); its path."""
    tmp = os.path.join(target_dir, f".{target_name}.tmp-{os.getpid()}")
    remove_db_files(tmp)
    try:
        src = sqlite3.connect(source, timeout=30)
        try:
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp
    except sqlite3.Error as e:
        remove_db_files(tmp)
        raise Failure(f"copying {source}: {e}") from None
    except BaseException:
        remove_db_files(tmp)
        raise


def snapshot_name(service: str) -> str:
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    return f"{service}-{stamp}"


def cmd_wrapper(req: dict[str, Any]) -> dict[str, Any]:
    """`lock` or `unlock` of a wrapper instance: a non-zero exit of `lock` refuses it."""
    dep = Deployment(req)
    inst = Instance(req_obj(req, "instance"), full=True)
    action = req_str(req, "action")
    if inst.type != "wrapper" or action not in ("lock", "unlock"):
        bad("'action' must be lock or unlock, of a wrapper instance")
    return run_wrapper(dep.ensure(), inst, action)


def cmd_snapshot(req: dict[str, Any]) -> dict[str, Any]:
    dep = Deployment(req)
    service = name_field(req, "service")
    if "instance" in req:  # a wrapper: it writes its own snapshot to $RECONCILER_SNAPSHOT
        inst = Instance(req_obj(req, "instance"), full=True)
        path = os.path.join(dep.ensure().root, "snapshots", snapshot_name(service))
        run_wrapper(dep, inst, "snapshot", {"RECONCILER_SNAPSHOT": path})
        if not os.path.isfile(path):
            raise Failure(f"{inst.key}: wrapper snapshot wrote no file to $RECONCILER_SNAPSHOT")
        return {"path": path}
    db = dep.db(service)
    if not os.path.isfile(db):
        raise Failure(f"no database to snapshot: {db}")
    dep.ensure()
    folder = os.path.join(dep.root, "snapshots")
    name = f"{snapshot_name(service)}.sqlite"
    tmp = sqlite_copy(db, folder, name)
    final = os.path.join(folder, name)
    os.replace(tmp, final)
    fsync_dir(folder)
    return {"path": final}


def cmd_restore(req: dict[str, Any]) -> dict[str, Any]:
    dep = Deployment(req)
    service = name_field(req, "service")
    source = abs_path(req, "from")
    if not os.path.isfile(source):
        raise Failure(f"no snapshot at {source}")
    dep.ensure()
    if "instance" in req:  # a wrapper restores from $RECONCILER_SNAPSHOT itself
        inst = Instance(req_obj(req, "instance"), full=True)
        os.makedirs(dep.state(service), exist_ok=True)
        return run_wrapper(dep, inst, "restore", {"RECONCILER_SNAPSHOT": source})
    state = dep.state(service)
    os.makedirs(state, exist_ok=True)
    db = dep.db(service)
    tmp = sqlite_copy(source, state, os.path.basename(db))
    try:
        old = os.stat(db)
    except FileNotFoundError:
        old = None
    try:
        if old is not None:
            os.chmod(tmp, old.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.chown(tmp, old.st_uid, old.st_gid)
        # the old database's journal files must not be applied to the restored one
        for suffix in ("-journal", "-wal", "-shm"):
            remove(db + suffix)
        os.replace(tmp, db)
    except BaseException:
        remove_db_files(tmp)
        raise
    fsync_dir(state)
    return {"path": db}


def cmd_switch_profile(req: dict[str, Any]) -> dict[str, Any]:
    dep = Deployment(req)
    generation = opt_int(req, "generation")
    if generation is None or generation < 0:
        bad("'generation' must be a non-negative integer")
    dep.ensure()
    relative = f"profiles/{generation}"
    profile_path = os.path.join(dep.root, relative)
    # back to a previous generation: its own profile file, if still there, is the better one
    if "profile" in req and not (req.get("ifMissing") and os.path.isfile(profile_path)):
        write_atomic(profile_path, dumps(req["profile"]))
    elif not os.path.isfile(profile_path):
        raise Failure(f"no profile {relative} and none given")
    current = os.path.join(dep.root, "current")
    previous = os.readlink(current) if os.path.islink(current) else None
    tmp = os.path.join(dep.root, f".current.tmp-{os.getpid()}")
    remove(tmp)
    os.symlink(relative, tmp)
    try:
        os.replace(tmp, current)
    except OSError as e:
        remove(tmp)
        raise Failure(f"cannot switch {current}: {e}") from None
    fsync_dir(dep.root)
    if "manifest" in req:
        write_atomic(os.path.join(dep.root, "manifest.json"), dumps(req["manifest"]))
    return {"current": relative, "previous": previous}


def cmd_read_manifest(req: dict[str, Any]) -> dict[str, Any]:
    dep = Deployment(req)
    manifest = read_json(os.path.join(dep.root, "manifest.json"))
    if manifest is None:
        return {}
    if not isinstance(manifest, dict):
        raise Failure("manifest.json does not hold a JSON object")
    return manifest


def cmd_list_store(req: dict[str, Any]) -> dict[str, Any]:
    """{store path: content hash} of every completed path (reconstruct records them)."""
    meta = os.path.join(abs_path(req, "stateDir"), "store", ".meta")
    paths = {}
    for name in sorted(os.listdir(meta)) if os.path.isdir(meta) else []:
        info = read_json(os.path.join(meta, name)) if name.endswith(".json") else None
        path = name[: -len(".json")]
        if isinstance(info, dict) and os.path.isdir(os.path.join(meta, "..", path)):
            paths[path] = info.get("content_hash")
    return {"paths": paths}


def tree_size(path: str) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, f)).st_size
    return total


def remove_tree(path: str) -> None:
    """Remove a folder, store paths included (they are read-only)."""
    for folder, dirs, _ in os.walk(path):
        os.chmod(folder, 0o755)
        for d in dirs:
            with contextlib.suppress(OSError):
                if not os.path.islink(os.path.join(folder, d)):
                    os.chmod(os.path.join(folder, d), 0o755)
    shutil.rmtree(path, ignore_errors=True)


def profile_numbers(dep: Deployment) -> list[int]:
    folder = os.path.join(dep.root, "profiles")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(int(n) for n in names if n.isdigit())


def cmd_gc(req: dict[str, Any]) -> dict[str, Any]:
    """Under the caller's lease: drop this deployment's profiles not kept, then every store
    path no profile of any deployment on the machine references (and none received in
    the last `graceSeconds`: an attempt may be transferring before it locks); with
    `deleteState`, the state, runtime folders and snapshots of services no kept profile
    places here."""
    dep = Deployment(req)
    owner = req_str(req, "owner")
    keep = req.get("keep")
    if not isinstance(keep, list) or not all(isinstance(g, int) for g in keep):
        bad("'keep' must be a list of generation numbers")
    extra = req.get("keepPaths", [])
    grace = seconds(req.get("graceSeconds"), "graceSeconds", 3600.0)
    lease = read_lease(os.path.join(dep.state_dir, "lock"))
    if not lease or lease.get("owner") != owner:
        raise Failure(f"gc needs the machine's lock, held by {(lease or {}).get('owner')}")
    removed_profiles = []
    current = os.path.join(dep.root, "current")
    live = os.readlink(current) if os.path.islink(current) else None
    for n in profile_numbers(dep):
        if n not in keep and f"profiles/{n}" != live:
            remove(os.path.join(dep.root, "profiles", str(n)))
            removed_profiles.append(n)
    referenced = set(extra)
    services: set[str] = set()
    unknown = []  # profiles written before they listed their closure: keep everything
    deployments = os.path.join(dep.state_dir, "deployments")
    for name in sorted(os.listdir(deployments)) if os.path.isdir(deployments) else []:
        other = Deployment({"stateDir": dep.state_dir, "deployment": name})
        for n in profile_numbers(other):
            profile = read_json(os.path.join(other.root, "profiles", str(n)))
            if not isinstance(profile, dict) or not isinstance(profile.get("closure"), list):
                unknown.append(f"{name}/profiles/{n}")
                continue
            referenced.update(profile["closure"])
            if name == dep.name:
                services.update(profile.get("services", []))
    store = os.path.join(dep.state_dir, "store")
    removed: list[str] = []
    freed = young = 0
    now = time.time()
    for path in sorted(os.listdir(store)) if os.path.isdir(store) and not unknown else []:
        meta = os.path.join(store, ".meta", path + ".json")
        if path.startswith(".") or path in referenced:
            continue
        try:
            received = os.lstat(meta).st_ctime  # tar keeps mtimes; ctime is arrival
        except FileNotFoundError:
            received = 0.0  # never completed: an interrupted transfer's leftover
        if now - received < grace:
            young += 1
            continue
        freed += tree_size(os.path.join(store, path))
        remove(meta)  # first the meta: a path without one never counts as present
        remove_tree(os.path.join(store, path))
        removed.append(path)
    removed_state = []
    if req.get("deleteState"):
        manifest = read_json(os.path.join(dep.root, "manifest.json"))
        if isinstance(manifest, dict) and isinstance(manifest.get("instances"), dict):
            services.update(i.get("service") for i in manifest["instances"].values())
        for sub in ("state", "instances"):
            folder = os.path.join(dep.root, sub)
            for service in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                if service not in services:
                    freed += tree_size(os.path.join(folder, service))
                    remove_tree(os.path.join(folder, service))
                    if sub == "state":
                        removed_state.append(service)
        snapshots = os.path.join(dep.root, "snapshots")
        for name in os.listdir(snapshots) if os.path.isdir(snapshots) else []:
            freed += file_size(os.path.join(snapshots, name))
            remove(os.path.join(snapshots, name))
    return {
        "removedProfiles": removed_profiles,
        "removedPaths": removed,
        "removedState": removed_state,
        "freedBytes": freed,
        "unknownProfiles": unknown,
        "keptYoung": young,
    }


COMMANDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "activate": cmd_activate,
    "deactivate": cmd_deactivate,
    "status": cmd_status,
    "lock": cmd_lock,
    "unlock": cmd_unlock,
    "snapshot": cmd_snapshot,
    "restore": cmd_restore,
    "switch-profile": cmd_switch_profile,
    "read-manifest": cmd_read_manifest,
    "gc": cmd_gc,
    "list-store": cmd_list_store,
    "wrapper": cmd_wrapper,
}


# --- main --------------------------------------------------------------------------


def emit(value: dict[str, Any]) -> None:
    try:
        sys.stdout.write(json.dumps(value, sort_keys=True) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        pass


def where(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return ""
    return f" (at line {tb.tb_lineno} in {tb.tb_frame.f_code.co_name})"


def run(args: list[str], stdin: bytes) -> tuple[int, dict[str, Any]]:
    if len(args) != 1 or args[0] not in COMMANDS:
        usage = "usage: agent.py {" + ",".join(COMMANDS) + "} < request.json"
        return 2, {"error": f"bad request: {usage}"}
    try:
        request = json.loads(stdin.decode("utf-8"))
    except ValueError as e:
        return 2, {"error": f"bad request: not a JSON document ({e})"}
    if not isinstance(request, dict):
        return 2, {"error": "bad request: the request must be a JSON object"}
    try:
        return 0, COMMANDS[args[0]](request)
    except BadRequest as e:
        return 2, {"error": f"bad request: {e}"}
    except Failure as e:
        out: dict[str, Any] = dict(e.extra)
        out["error"] = e.message
        if e.log:
            out["log"] = e.log
        return 1, out
    except KeyboardInterrupt:
        return 1, {"error": "interrupted"}
    except Exception as e:
        return 1, {"error": f"{args[0]} failed: {type(e).__name__}: {e}{where(e)}"}


def serve() -> int:
    """One process for a whole attempt: a JSON request per line on stdin
    ({"id", "command", "request"}), each run in its own thread, its answer a line on
    stdout ({"id", "code", "answer"}) as soon as it is done. Starting python3 for every
    operation cost more than most operations themselves."""
    import threading

    out = threading.Lock()
    workers = []

    def handle(line: bytes) -> None:
        try:
            msg = json.loads(line.decode("utf-8"))
            ident, command, request = msg["id"], msg["command"], msg["request"]
        except (ValueError, KeyError, TypeError) as e:
            ident, code, answer = None, 2, {"error": f"bad request: {e}"}
        else:
            code, answer = run([command], json.dumps(request).encode())
        with out:
            try:
                sys.stdout.write(json.dumps({"id": ident, "code": code, "answer": answer}) + "\n")
                sys.stdout.flush()
            except (BrokenPipeError, OSError):
                pass

    for line in sys.stdin.buffer:
        if line.strip():
            worker = threading.Thread(target=handle, args=(line,))
            worker.start()
            workers.append(worker)
    for worker in workers:
        worker.join()
    return 0


def main() -> int:
    if sys.argv[1:] == ["serve"]:
        return serve()
    try:
        stdin = sys.stdin.buffer.read()
    except (OSError, KeyboardInterrupt) as e:
        emit({"error": f"bad request: cannot read stdin ({e})"})
        return 2
    code, out = run(sys.argv[1:], stdin)
    emit(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
