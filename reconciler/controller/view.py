"""What the HTTP side reads of the controller (the `View` of controller/http.py): the
last status document per deployment, history, the replicas, an instance's log, and a way
to poke the loops. Thread safe: the HTTP side calls it from its own threads."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.controller.run import Controller


class ControllerView:
    """What the HTTP side reads (thread safe): the last document per deployment."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.docs: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def put(self, name: str, doc: dict[str, Any]) -> None:
        with self.lock:
            self.docs[name] = doc

    def deployments(self) -> list[dict[str, Any]]:
        with self.lock:
            return [self.docs[n] for n in sorted(self.docs)]

    def deployment(self, name: str) -> dict[str, Any] | None:
        with self.lock:
            return self.docs.get(name)

    def history(self, name: str) -> Any:
        from reconciler.execute.history import history_rows

        if name not in self.controller.loops:
            return None
        return history_rows(self.controller.opts, name)

    def ready(self) -> tuple[bool, str]:
        loops = list(self.controller.loops.values())
        waiting = [d.name for d in loops if d.passes == 0 or d.name not in self.docs]
        if waiting:
            return False, f"first pass not done yet: {', '.join(sorted(waiting))}"
        return True, "ok"

    def controllers(self) -> list[dict[str, Any]]:
        """The replicas sharing this state, with their last heartbeat and what they own."""
        from reconciler.state import locks
        from reconciler.state.db import open_db

        db = open_db(self.controller.opts.state_location, write=False)
        if db is None:
            return []
        try:
            owners: dict[str, list[str]] = {}
            for lease in locks.leases_with_prefix(db, "owner/"):
                if lease.live:
                    owners.setdefault(lease.holder, []).append(lease.name.split("/", 1)[1])
            ttl = self.controller.settings.lease_seconds
            return [
                {
                    "id": r.id,
                    "host": r.host,
                    "pid": r.pid,
                    "startedAt": r.started_at,
                    "heartbeatAt": r.heartbeat_at,
                    "live": r.heartbeat > time.time() - ttl,
                    "thisReplica": r.id == self.controller.ownership.id,
                    "deployments": sorted(owners.get(r.id, [])),
                }
                for r in locks.replicas(db)
            ]
        finally:
            db.close()

    def instance_log(self, deployment: str, key: str) -> str | None:
        """Called in one of the HTTP side's threads: the machine is asked from there."""
        from reconciler.execute.observe import log_tail
        from reconciler.state.db import open_db
        from reconciler.state.rows import read_deployment

        opts = self.controller.opts
        db = open_db(opts.state_location, write=False)
        if deployment not in self.controller.loops or db is None:
            return None
        try:
            record = read_deployment(db, deployment)
            return (
                None if record is None else asyncio.run(log_tail(db, record, key, opts.state_root))
            )
        finally:
            db.close()

    def poke(self, repo_urls: list[str]) -> int:
        ours = _repo_key(self.controller.opts.repo)
        if repo_urls and ours and ours not in {_repo_key(u) for u in repo_urls}:
            return 0
        return self.controller.poke_all()


def _repo_key(url: str) -> str | None:
    """'org/name' of a repository URL in any of its forms (https, ssh, scp-like)."""
    parts = [p for p in url.rstrip("/").removesuffix(".git").replace(":", "/").split("/") if p]
    return "/".join(parts[-2:]).lower() if len(parts) >= 2 else None
