"""Processes on the target (Linux /proc): whom to run as, process groups, stopping them.
A process is identified by its pid and its start time (/proc/<pid>/stat field 22):
pids are reused."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time

from .request import Failure

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
KILL_WAIT = 5.0  # seconds to wait for a SIGKILLed group to vanish


def child_env(env: dict[str, str]) -> dict[str, str]:
    result = dict(env)
    result.setdefault("PATH", DEFAULT_PATH)
    return result


class RunAs:
    """Whom to run an instance's process as: `user` if set and we are root, else us."""

    def __init__(self, user: str | None, key: str) -> None:
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
            raise Failure(
                f"{key}: no such user on this machine: {user} (create it, or change the "
                "service's user:)"
            ) from None
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        self.groups = os.getgrouplist(user, entry.pw_gid)

    def chown(self, path: str) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


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
    """The live (non-zombie) processes of process group `pgid`: a zombie has exited and
    holds nothing but its pid (this machine's init may be slow to reap it)."""
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


def wait_group_gone(pgid: int, seconds: float, child: subprocess.Popen[bytes] | None) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if child is not None:
            child.poll()
        if not group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def stop_group(pgid: int, child: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the group (and SIGCONT, for stopped ones), SIGKILL after STOP_GRACE; back
    only once every member has exited (so a `destroy` that returns has stopped them)."""
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
