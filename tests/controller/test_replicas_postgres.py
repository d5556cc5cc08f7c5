"""Three `reconciler run` replicas on one PostgreSQL state are one controller (SPEC §11):
the deployments spread over them, `kill -9` of one hands its deployments to the others
within two lease lengths, and every later commit is applied exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.state.db import open_db
from tests.controller.test_run import (  # noqa: F401 (remote: a fixture)
    HELLO,
    Remote,
    answer,
    free_port,
    remote,
)
from tests.postgres import Database
from tests.support import RECONCILER, clean_env, run_cli

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
    out["hello/bin/hello"] = HELLO.format(message=message, delay=0)
    return out


def query(url: str, sql: str) -> list[dict[str, Any]]:
    db = open_db(url, write=False)
    if db is None:
        return []
    try:
        return list(db.query(sql))
    finally:
        db.close()


def serving(url: str, message: str) -> bool:
    """Every deployment's instance answers with `message`."""
    rows = query(
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
        for r in query(url, "SELECT name, holder, expires_at FROM leases WHERE name LIKE 'owner/%'")
        if r["expires_at"] > now
    }


def wait(what: str, check: Callable[[], Any], timeout: float, logs: list[Path]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = check()
        except (OSError, ValueError, LookupError):
            got = None
        if got:
            return got
        time.sleep(0.2)
    tails = "\n".join(log.read_text()[-3000:] for log in logs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def test_three_replicas_share_the_work_and_survive_kill_9(
    remote: Remote,  # noqa: F811
    postgres_db: Database,
    tmp_path: Path,
) -> None:
    remote.push(files("v1"), "hello v1")
    url = postgres_db.url
    home = tmp_path / "home"  # one host: the replicas share the local machines' folder
    env = clean_env(RECONCILER_HOME=str(home))
    ports = [free_port() for _ in range(3)]
    logs = [tmp_path / f"replica{i}.log" for i in range(3)]
    replicas = [
        subprocess.Popen(
            [
                RECONCILER,
                "--repo",
                remote.url,
                "--state",
                url,
                "run",
                "--listen",
                f"127.0.0.1:{port}",
                "--lease-seconds",
                str(LEASE),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
        )
        for port, log in zip(ports, logs, strict=True)
    ]
    try:
        wait("v1 everywhere", lambda: serving(url, "v1"), 180, logs)
        spread = wait("the work spread over three", lambda: len(set(owners(url).values())) == 3
                      and owners(url), 60, logs)  # fmt: skip
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/api/controllers") as r:
            listed = json.loads(r.read())["controllers"]
        assert sum(c["live"] for c in listed) == 3
        assert sorted(d for c in listed for d in c["deployments"]) == DEPLOYMENTS

        victim = replicas[0]
        mine = {d for d, holder in spread.items() if f"-{victim.pid}-" in holder}
        assert mine, spread
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed = time.monotonic()
        wait(
            "its deployments owned by the others",
            lambda: all(
                d in (now := owners(url)) and f"-{victim.pid}-" not in now[d] for d in mine
            ),
            4 * LEASE,
            logs,
        )
        assert time.monotonic() - killed <= 2 * LEASE + 2  # within two lease lengths (+ a poll)

        remote.push(files("v2"), "hello v2")
        wait("v2 everywhere", lambda: serving(url, "v2"), 180, logs)
        time.sleep(2 * LEASE)  # time for a duplicate, if any replica were to make one
        twice = query(
            url,
            "SELECT deployment, commit_sha, count(*) AS n FROM attempts "
            "WHERE status = 'succeeded' GROUP BY deployment, commit_sha HAVING count(*) > 1",
        )
        assert twice == []
        per_deployment = query(
            url,
            "SELECT deployment, count(*) AS n FROM attempts WHERE status = 'succeeded' "
            "GROUP BY deployment",
        )
        assert {r["deployment"]: r["n"] for r in per_deployment} == dict.fromkeys(DEPLOYMENTS, 2)
    finally:
        for proc in replicas:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in replicas:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        for d in DEPLOYMENTS:
            run_cli("--state", url, "-d", d, "destroy", "--yes", cwd=tmp_path,
                    env={"RECONCILER_HOME": str(home)})  # fmt: skip
