"""The provisioning record: one row per provisioned machine in the `provisioning` table
(the `Recorder` the provisioners of reconciler/provision write through).

Every write is a single autocommit statement, so it is committed when the call returns
(the idempotency token must be on disk before the provider call it guards). Open the
recorder on its own connection (`SqliteRecorder.open`) when the caller may hold a
transaction on its connection while provisioners run: a statement issued from a worker
thread on that connection would join, and roll back with, the caller's transaction.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import ProvisionError
from reconciler.state.db import StateDB, now, open_db


@dataclass(frozen=True)
class ProvisioningRecord:
    deployment: str
    machine: str
    provider: str
    token: str
    provider_id: str | None
    state: str
    detail: dict[str, Any]
    updated_at: str


class SqliteRecorder:
    """`Recorder` over the provisioning table of one deployment; thread safe."""

    def __init__(self, db: StateDB, deployment: str) -> None:
        self.db = db
        self.deployment = deployment
        self._lock = threading.Lock()  # one statement at a time on the shared connection
        self._owned = False

    @classmethod
    def open(cls, location: str | Path, deployment: str) -> SqliteRecorder:
        """A recorder with its own connection to the state DB at `location`."""
        db = open_db(location, write=True)
        assert db is not None  # a writer always gets a database
        recorder = cls(db, deployment)
        recorder._owned = True
        return recorder

    def close(self) -> None:
        if self._owned:
            self.db.close()

    def token(self, machine: str, provider: str) -> str:
        with self._lock:
            row = self._row(machine)
            if row is not None and row.provider != provider:
                if row.provider_id is not None:
                    raise ProvisionError(
                        f"machine {machine}: recorded as provisioned by {row.provider} "
                        f"({row.provider_id}), now wanted as {provider}; destroy the old one "
                        "first"
                    )
                self.db.execute(  # never created: the old token guards nothing
                    "DELETE FROM provisioning WHERE deployment = ? AND machine = ?",
                    [self.deployment, machine],
                )
            self.db.execute(
                "INSERT INTO provisioning (deployment, machine, provider, token, state, detail, "
                "updated_at) VALUES (?, ?, ?, ?, 'planned', '{}', ?) "
                "ON CONFLICT (deployment, machine) DO NOTHING",
                [self.deployment, machine, provider, uuid.uuid4().hex, now()],
            )
            row = self._row(machine)
            assert row is not None
            return row.token

    def step(self, machine: str, state: str, provider_id: str | None = None, **detail: Any) -> None:
        """No-op without a row (`token` makes it): there is nothing to say progress about.
        Only this machine's thread writes its row, so reading it first is safe."""
        with self._lock:
            row = self._row(machine)
            if row is None:
                return
            self.db.execute(
                "UPDATE provisioning SET state = ?, provider_id = coalesce(?, provider_id), "
                "detail = ?, updated_at = ? WHERE deployment = ? AND machine = ?",
                [
                    state,
                    provider_id,
                    json.dumps(merge_patch(row.detail, detail)),
                    now(),
                    self.deployment,
                    machine,
                ],
            )

    def forget(self, machine: str) -> None:
        with self._lock:
            self.db.execute(
                "DELETE FROM provisioning WHERE deployment = ? AND machine = ?",
                [self.deployment, machine],
            )

    def detail(self, machine: str) -> dict[str, Any]:
        with self._lock:
            row = self._row(machine)
            return dict(row.detail) if row else {}

    def get(self, machine: str) -> ProvisioningRecord | None:
        with self._lock:
            return self._row(machine)

    def all(self) -> dict[str, ProvisioningRecord]:
        """Every machine of the deployment with a provisioning record, by name."""
        with self._lock:
            rows = self.db.query(
                "SELECT * FROM provisioning WHERE deployment = ? ORDER BY machine",
                [self.deployment],
            )
            return {r["machine"]: _record(r) for r in rows}

    def _row(self, machine: str) -> ProvisioningRecord | None:
        row = next(
            self.db.query(
                "SELECT * FROM provisioning WHERE deployment = ? AND machine = ?",
                [self.deployment, machine],
            ),
            None,
        )
        return _record(row) if row else None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch (what SQLite's json_patch does): objects merge key by
    key, a null removes the key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _record(row: dict[str, Any]) -> ProvisioningRecord:
    return ProvisioningRecord(
        deployment=row["deployment"],
        machine=row["machine"],
        provider=row["provider"],
        token=row["token"],
        provider_id=row["provider_id"],
        state=row["state"],
        detail=json.loads(row["detail"] or "{}"),
        updated_at=row["updated_at"],
    )


def interrupted_creates(
    location: str | Path, deployment: str, known: set[str]
) -> list[tuple[str, str]]:
    """(machine, provider) of the deployment's machines that reached their provider but
    are not among `known` (the recorded machines): creates a killed process left behind,
    which destroy must find by their token (a row still `planned` never reached the
    provider)."""
    db = open_db(location, write=False)
    if db is None:
        return []
    try:
        rows = db.query(
            "SELECT machine, provider FROM provisioning WHERE deployment = ? "
            "AND state != 'planned'",
            [deployment],
        )
        return [(r["machine"], r["provider"]) for r in rows if r["machine"] not in known]
    finally:
        db.close()
