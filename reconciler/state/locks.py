"""Leases in the state (SPEC §11): one attempt at a time per deployment (`attempt/<d>`),
and which controller replica owns a deployment (`owner/<d>`). A lease names its holder,
expires unless renewed, and carries a fencing token raised on every claim, so a holder
that lost its lease (killed, paused, cut off) can tell, and record nothing.

Time is the writers' wall clock (seconds since the epoch): the replicas of one state are
expected to keep their clocks in step (NTP), as the machines' leases are.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from reconciler.errors import UserError
from reconciler.state.db import StateDB, now, transaction


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    token: int
    expires_at: float

    @property
    def live(self) -> bool:
        return self.expires_at > time.time()


class LeaseLost(UserError):
    """The lease a write depends on is no longer ours: nothing was recorded."""


def attempt_lease(deployment: str) -> str:
    return f"attempt/{deployment}"


def owner_lease(deployment: str) -> str:
    return f"owner/{deployment}"


def current(db: StateDB, name: str) -> Lease | None:
    row = next(db.query("SELECT * FROM leases WHERE name = ?", [name]), None)
    return None if row is None else _lease(row)


def claim(db: StateDB, name: str, holder: str, ttl: float) -> Lease | None:
    """Take the lease, or extend it when `holder` has it already; None when another
    holder's lease is live. Taking it over (or anew) raises the token."""
    with transaction(db):
        have = current(db, name)
        expires = time.time() + ttl
        if have is None:
            db.execute(
                "INSERT INTO leases (name, holder, token, expires_at, claimed_at) "
                "VALUES (?, ?, 1, ?, ?)",
                [name, holder, expires, now()],
            )
            return Lease(name, holder, 1, expires)
        if have.live and have.holder != holder:
            return None
        token = have.token if have.live else have.token + 1
        db.execute(
            "UPDATE leases SET holder = ?, token = ?, expires_at = ?, claimed_at = ? "
            "WHERE name = ?",
            [holder, token, expires, now(), name],
        )
        return Lease(name, holder, token, expires)


def take_over(db: StateDB, dead: Lease, holder: str, ttl: float) -> Lease | None:
    """Take a live lease whose holder is known to be gone; None when it changed hands
    meanwhile."""
    expires = time.time() + ttl
    with transaction(db):
        if not held(db, dead):
            return None
        db.execute(
            "UPDATE leases SET holder = ?, token = ?, expires_at = ?, claimed_at = ? "
            "WHERE name = ? AND token = ?",
            [holder, dead.token + 1, expires, now(), dead.name, dead.token],
        )
    return Lease(dead.name, holder, dead.token + 1, expires)


def renew(db: StateDB, lease: Lease, ttl: float) -> Lease | None:
    """Extend a lease still held with its token; None when it was lost."""
    expires = time.time() + ttl
    with transaction(db):
        if not held(db, lease):
            return None
        db.execute(
            "UPDATE leases SET expires_at = ? WHERE name = ? AND token = ?",
            [expires, lease.name, lease.token],
        )
    return Lease(lease.name, lease.holder, lease.token, expires)


def release(db: StateDB, lease: Lease) -> None:
    """Give it back at once (the row stays: the token must never go back)."""
    with transaction(db):
        db.execute(
            "UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ? AND token = ?",
            [lease.name, lease.holder, lease.token],
        )


def held(db: StateDB, lease: Lease) -> bool:
    have = current(db, lease.name)
    return (
        have is not None
        and have.live
        and (have.holder, have.token)
        == (
            lease.holder,
            lease.token,
        )
    )


def fence(db: StateDB, lease: Lease | None) -> None:
    """Inside a write's transaction: refuse it when its lease was lost."""
    if lease is not None and not held(db, lease):
        raise LeaseLost(
            f"{lease.name}: this process no longer holds it (token {lease.token}); "
            "another took over and nothing more is recorded from here"
        )


def leases_with_prefix(db: StateDB, prefix: str) -> list[Lease]:
    return [
        _lease(r)
        for r in db.query(
            "SELECT * FROM leases WHERE name LIKE ? ORDER BY name", [prefix.replace("%", "") + "%"]
        )
    ]


# --- controller replicas --------------------------------------------------------------


@dataclass(frozen=True)
class Replica:
    id: str
    host: str
    pid: int
    started_at: str
    heartbeat_at: str
    heartbeat: float


def heartbeat(db: StateDB, replica: str, host: str, pid: int) -> None:
    with transaction(db):
        db.execute(
            "INSERT INTO controllers (id, host, pid, started_at, heartbeat_at, heartbeat) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "heartbeat_at = excluded.heartbeat_at, heartbeat = excluded.heartbeat",
            [replica, host, pid, now(), now(), time.time()],
        )


def replicas(db: StateDB) -> list[Replica]:
    return [
        Replica(r["id"], r["host"], r["pid"], r["started_at"], r["heartbeat_at"], r["heartbeat"])
        for r in db.query("SELECT * FROM controllers ORDER BY id")
    ]


def forget_replica(db: StateDB, replica: str) -> None:
    with transaction(db):
        db.execute("DELETE FROM controllers WHERE id = ?", [replica])


def _lease(row: dict[str, object]) -> Lease:
    return Lease(
        str(row["name"]),
        str(row["holder"]),
        int(row["token"]),  # type: ignore[call-overload]
        float(row["expires_at"]),  # type: ignore[arg-type]
    )
