"""Failover of a database from its latest kept snapshot, end to end (SPEC §10
`failover: {after, stateful: latest-snapshot}`): a controller, three real SSH hosts in
network namespaces, a `sqlite-database` placed by policy. A row written there reaches the
controller's kept snapshot; cut the host's link: the database answers on another host,
with the row, and history says from which snapshot and how old it was."""

from __future__ import annotations

import json
import shlex
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.controller.test_failover import api, wait_for
from tests.controller.test_run import free_port
from tests.support import RECONCILER, clean_env, make_repo, run_cli
from tests.testhosts import TestHost, TestHostNetwork

pytestmark = [pytest.mark.hosts, pytest.mark.slow]

DB = "/var/lib/reconciler/deployments/notes/state/db/db.sqlite"


def models(net: TestHostNetwork) -> dict[str, str]:
    machines = {f"m{i + 1}": {"deployment": h.deployment()} for i, h in enumerate(net.hosts)}
    model = {
        "machines": machines,
        "packages": {"db": {"src": "pkgs/db"}},
        "services": {"db": {"package": "db", "type": "sqlite-database"}},
        "distribution": {"db": {"replicas": 1}},
    }
    return {
        "reconciler.yaml": "deployments:\n  notes:\n    models: [app.yaml]\n    interval: 1s\n"
        "    failover: {after: 2s, stateful: latest-snapshot}\n",
        "app.yaml": json.dumps(model),
        "pkgs/db/schema.sql": "CREATE TABLE notes (note TEXT NOT NULL);\n",
    }


def db_on(doc: dict[str, Any]) -> str | None:
    """The one machine where the database is active (one on a failed machine is not)."""
    found = [
        i["machine"]
        for i in doc.get("instances", [])
        if i["service"] == "db" and i["state"] == "active"
    ]
    return found[0] if len(found) == 1 else None


def sql(host: TestHost, statement: str) -> list[list[Any]]:
    """A statement run by python3 on the host itself, over SSH; the rows it returns."""
    script = (
        f"import json, sqlite3; c = sqlite3.connect({DB!r}); "
        f"rows = c.execute({statement!r}).fetchall(); c.commit(); print(json.dumps(rows))"
    )
    out = host.run(f"python3 -c {shlex.quote(script)}", timeout=20).stdout
    rows: list[list[Any]] = json.loads(out)
    return rows


def kept_since(state: Path, instance: str, since: float) -> bool:
    """Whether the controller has kept a snapshot of `instance` taken after `since`."""
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT taken_at FROM kept_snapshots WHERE instance = ?", [instance]
        ).fetchone()
    finally:
        db.close()
    return row is not None and row[0] > since


def test_a_database_fails_over_from_its_latest_kept_snapshot(
    ssh_network_factory: Callable[[int], TestHostNetwork], tmp_path: Path
) -> None:
    net = ssh_network_factory(3)
    repo = make_repo(tmp_path / "models", models(net))
    port = free_port()
    state = tmp_path / "state.db"
    log = tmp_path / "controller.log"
    controller = subprocess.Popen(
        [RECONCILER, "--repo", str(repo), "--state", str(state), "run", "--listen",
         f"127.0.0.1:{port}"],
        env=clean_env(), stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )  # fmt: skip
    host = {f"m{i + 1}": h for i, h in enumerate(net.hosts)}
    first = None
    try:
        first = wait_for(
            lambda: db_on(api(port, "/api/deployments/notes")), 90, "the first generation"
        )
        sql(host[first], "INSERT INTO notes VALUES ('written on the first machine')")
        written = time.time()
        wait_for(lambda: kept_since(state, f"db@{first}", written), 30, "a snapshot kept")
        kept = list((tmp_path / "snapshots" / "notes" / f"db@{first}").iterdir())
        assert len(kept) == 1 and kept[0].stat().st_mode & 0o777 == 0o600

        net.cut(host[first])
        second = wait_for(
            lambda: (m := db_on(api(port, "/api/deployments/notes"))) != first and m,
            120,
            "the database on another machine",
        )
        assert sql(host[second], "SELECT note FROM notes") == [["written on the first machine"]]

        reason = api(port, "/api/deployments/notes/history")[0]["reason"]
        assert reason.startswith(f"failover: {first} unreachable since ")
        assert f"db@{first} fails over from its snapshot of " in reason and " old)" in reason
        # the moved database's own snapshot is kept from now on
        wait_for(lambda: kept_since(state, f"db@{second}", written), 30, "its snapshot kept")
    finally:
        if first is not None:
            net.restore(host[first])
        controller.send_signal(signal.SIGTERM)
        controller.wait(timeout=60)
        run_cli("--state", str(state), "-d", "notes", "destroy", "--yes", cwd=repo, timeout=120)
