"""Observation rounds (SPEC §5 at scale): the machines of every deployment this replica
owns are observed together on their own interval, not by each deployment's pass — a
machine shared by many deployments is asked once a round for all of them
(execute/observe.py: observe_many), no more than `limit` machines at once. Records are
read from the state again only for the deployments whose record changed since the last
round (one query tells which)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from reconciler.options import Options

if TYPE_CHECKING:
    from reconciler.execute.observe import Observation
    from reconciler.state.db import StateDB
    from reconciler.state.rows import DeploymentRecord

MAX_OBSERVING = 8  # machines asked at once (each an SSH connection, or a thread here)


class Rounds:
    def __init__(self, opts: Options, limit: int = MAX_OBSERVING) -> None:
        self.opts = opts
        self.limit = asyncio.Semaphore(limit)
        self.records: dict[str, tuple[tuple[Any, ...], DeploymentRecord]] = {}

    async def observe(self, names: list[str]) -> dict[str, Observation]:
        """The deployments' observations (those not recorded yet have none)."""
        from reconciler.execute.observe import observe_many
        from reconciler.state.db import open_db

        db = open_db(self.opts.state_location, write=False)
        if db is None:
            return {}
        try:
            records = await asyncio.to_thread(self._records, db, names)
            return await observe_many(db, records, self.opts.state_root, limit=self.limit)
        finally:
            db.close()

    def _records(self, db: StateDB, names: list[str]) -> list[DeploymentRecord]:
        from reconciler.state.rows import read_deployment, record_versions

        versions = record_versions(db)
        found = []
        for name in names:
            version = versions.get(name)
            known = self.records.get(name)
            if version is None:  # not recorded (yet, or any more)
                self.records.pop(name, None)
                continue
            if known is None or known[0] != version:
                record = read_deployment(db, name)
                if record is None:
                    continue
                known = self.records[name] = (version, record)
            found.append(known[1])
        return found
