"""Three `reconciler run` replicas on one PostgreSQL state are one controller (SPEC §11):
the deployments spread over them, `kill -9` of one hands its deployments to the others
within two lease lengths, and every later commit is applied exactly once."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.controller.support import Controller, Remote, answer, read_state, wait_for
from tests.postgres import Database
from tests.support import http_service

pytestmark = pytest.mark.slow

DEPLOYMENTS = [f"d{i}" for i in range(6)]
LEASE = 3.0


def files(message: str) -> dict[str, str]:
    out = {
        "reconciler.yaml": "deployments:\n"
        + "".join(
            f"  {d}:\n    models: [{d}.yaml]\n    branch: main\n    interval: 1s\n"
            for d in DEPLOYMENTS
        )
    }
    for d in DEPLOYMENTS:
        out[f"{d}.yaml"] = (
            "machines:\n  m1: {deployment: {targetEnv: local}}\n"
            "packages:\n  hello: {src: hello}\n"
            "services:\n  hello:\n    package: hello\n    type: process\n"
            "    command: bin/hello\n    port: auto\n    healthCheck: {http: /, timeout: 20s}\n"
            "distribution:\n  hello: [m1]\n"
        )
    out["hello/bin/hello"] = http_service(repr(message))
    return out


def serving(url: str, message: str) -> bool:
    """Every deployment's instance answers with `message`."""
    rows = read_state(
        url,
        "SELECT a.key, a.value AS address, i.port FROM instances i JOIN allocations a "
        "ON a.key = 'local-address/' || i.deployment || '/m1'",
    )
    if len(rows) != len(DEPLOYMENTS):
        return False
    return all(answer(f"http://{r['address']}:{r['port']}/") == message for r in rows)


def owners(url: str) -> dict[str, str]:
    now = time.time()
    return {
        r["name"].split("/", 1)[1]: r["holder"]
        for r in read_state(
            url, "SELECT name, holder, expires_at FROM leases WHERE name LIKE 'owner/%'"
        )
        if r["expires_at"] > now
    }


def test_three_replicas_share_the_work_and_survive_kill_9(
    remote: Remote,
    postgres_db: Database,
    start: Callable[..., Controller],
    tmp_path: Path,
) -> None:
    remote.push(files("v1"), "hello v1")
    url = postgres_db.url
    home = tmp_path / "home"  # one host: the replicas share the local machines' folder
    replicas = [
        start(
            remote.url, "--lease-seconds", str(LEASE), state=url, env={"RECONCILER_HOME": str(home)}
        )
        for _ in range(3)
    ]
    logs = [c.log for c in replicas]
    wait_for("v1 everywhere", lambda: serving(url, "v1"), 180, logs)
    spread = wait_for("every deployment owned, by three", lambda: _spread(url), 60, logs)
    listed = wait_for("the replicas listed", lambda: _listed(replicas[0].port), 30, logs)
    assert sum(c["live"] for c in listed) == 3
    assert sorted(d for c in listed for d in c["deployments"]) == DEPLOYMENTS

    victim = replicas[0].proc
    mine = {d for d, holder in spread.items() if f"-{victim.pid}-" in holder}
    assert mine, spread
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = time.monotonic()
    wait_for(
        "its deployments owned by the others",
        lambda: all(d in (now := owners(url)) and f"-{victim.pid}-" not in now[d] for d in mine),
        4 * LEASE,
        logs,
    )
    assert time.monotonic() - killed <= 2 * LEASE + 2  # within two lease lengths (+ a poll)

    remote.push(files("v2"), "hello v2")
    wait_for("v2 everywhere", lambda: serving(url, "v2"), 180, logs)
    time.sleep(2 * LEASE)  # time for a duplicate, if any replica were to make one
    twice = read_state(
        url,
        "SELECT deployment, commit_sha, count(*) AS n FROM attempts "
        "WHERE status = 'succeeded' GROUP BY deployment, commit_sha HAVING count(*) > 1",
    )
    assert twice == []
    per_deployment = read_state(
        url,
        "SELECT deployment, count(*) AS n FROM attempts WHERE status = 'succeeded' "
        "GROUP BY deployment",
    )
    assert {r["deployment"]: r["n"] for r in per_deployment} == dict.fromkeys(DEPLOYMENTS, 2)


def _spread(url: str) -> dict[str, str] | None:
    """Who owns each deployment, once all are owned and by three replicas."""
    found = owners(url)
    return found if len(found) == len(DEPLOYMENTS) and len(set(found.values())) == 3 else None


def _listed(port: int) -> list[dict[str, Any]] | None:
    """/api/controllers, once it lists every deployment (it reads the leases as they are)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/controllers") as r:
        listed: list[dict[str, Any]] = json.loads(r.read())["controllers"]
    return listed if sum(len(c["deployments"]) for c in listed) == len(DEPLOYMENTS) else None
