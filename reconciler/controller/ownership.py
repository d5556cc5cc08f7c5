"""Several `reconciler run` processes on one state are one controller (SPEC §11): each
deployment is reconciled by at most one replica at a time, under an `owner/<d>` lease
renewed every third of its length. A replica claims unowned and expired deployments up
to its share of the live replicas, and gives back what is beyond its share when others
join, so the work spreads evenly; it releases its own on SIGTERM. One killed with
`kill -9` loses them when their leases expire, and another takes them over. The lease's
fencing token goes to every apply the owner starts: once another replica has taken the
deployment over, nothing more of that apply is recorded.

With one replica (SQLite, the default) it simply owns every deployment.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import time
import uuid
from collections.abc import Iterable

from reconciler.options import Options
from reconciler.state import locks
from reconciler.state.db import open_db

DEFAULT_TTL = 30.0


class Ownership:
    def __init__(self, opts: Options, ttl: float = DEFAULT_TTL) -> None:
        self.opts, self.ttl = opts, ttl
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.id = f"{self.host}-{self.pid}-{uuid.uuid4().hex[:6]}"
        self.owned: dict[str, locks.Lease] = {}

    def sync(self, names: Iterable[str], busy: Iterable[str] = ()) -> tuple[list[str], list[str]]:
        """Heartbeat, renew, then claim or give back towards an even share; `busy`
        (applying now) are never given back. Returns (newly claimed, lost)."""
        wanted = sorted(set(names))
        db = open_db(self.opts.state_location, write=True)
        assert db is not None
        claimed: list[str] = []
        lost: list[str] = []
        try:
            locks.heartbeat(db, self.id, self.host, self.pid)
            now = time.time()
            live = [r for r in locks.replicas(db) if r.heartbeat > now - self.ttl]
            share = math.ceil(len(wanted) / max(1, len(live)))
            for name, lease in list(self.owned.items()):
                renewed = locks.renew(db, lease, self.ttl) if name in wanted else None
                if renewed is None:
                    if name in wanted:
                        lost.append(name)
                    else:
                        locks.release(db, lease)
                    del self.owned[name]
                else:
                    self.owned[name] = renewed
            # each replica tries the deployments in its own order, so they rarely collide
            for name in sorted(set(wanted) - set(self.owned), key=self._order):
                if len(self.owned) >= share:
                    break
                got = locks.claim(db, locks.owner_lease(name), self.id, self.ttl)
                if got is not None:
                    self.owned[name] = got
                    claimed.append(name)
            idle = sorted((n for n in self.owned if n not in set(busy)), key=self._order)
            while len(self.owned) > share and idle:
                locks.release(db, self.owned.pop(idle.pop()))
        finally:
            db.close()
        return claimed, lost

    def owns(self, name: str) -> bool:
        lease = self.owned.get(name)
        return lease is not None and lease.live

    def fence(self, name: str) -> str | None:
        """What an apply started for this deployment must still hold when it records."""
        lease = self.owned.get(name)
        return f"{lease.name}={lease.holder}:{lease.token}" if lease else None

    def release_all(self) -> None:
        db = open_db(self.opts.state_location, write=True)
        assert db is not None
        try:
            for lease in self.owned.values():
                locks.release(db, lease)
            locks.forget_replica(db, self.id)
        finally:
            db.close()
        self.owned.clear()

    def _order(self, name: str) -> str:
        return hashlib.sha256(f"{self.id}/{name}".encode()).hexdigest()
