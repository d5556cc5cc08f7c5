"""The machine's lock (SPEC §3 step 4): a lease file in stateDir created atomically, owned
by one attempt, expiring by this machine's clock; an expired lease is taken over."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from typing import Any

from .files import dumps, fsync_dir, read_json, remove, utc_stamp, write_atomic
from .request import Failure, abs_path, req_str, seconds


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


def create(path: str, lease: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise Failure("the lease appeared while taking it; try again") from None
    try:
        os.write(fd, lease)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(os.path.dirname(path))


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
            create(path, lease)
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
