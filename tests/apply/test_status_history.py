"""`status`, `check` and `history` against example-repo deployed to local machines: what
they show after applies, a rolled back attempt, a killed process and a deleted store
path; and on a state DB with nothing (or only an unreachable machine) recorded. None of
them changes the state DB."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apply.test_apply_local import (
    example_files,
    example_repo,
    gone,
    running_pids,
)
from tests.support import commit, kill_instances, run_cli, write_files

pytestmark = pytest.mark.slow

GEOLOCATION = "packages/geolocation-service/bin/geolocation-service"


def _addresses() -> tuple[str, str]:
    """Loopback addresses of our own: tests running at the same time on this host (with
    the default 127.0.0.10 and up) must not take our ports."""
    pid = os.getpid()
    return (
        f"127.{100 + pid % 100}.{pid // 100 % 250}.1",
        f"127.{100 + pid % 100}.{pid // 100 % 250}.2",
    )


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Path]:
    files = example_files()
    physical = files["network/physical-local.yaml"]
    one, two = _addresses()
    physical = physical.replace(
        "targetEnv: local\n", f"targetEnv: local\n      address: {one}\n", 1
    ).replace(
        "targetEnv: local\n      maxParallel",
        f"targetEnv: local\n      address: {two}\n      maxParallel",
        1,
    )
    assert physical.count("address:") == 2
    files["network/physical-local.yaml"] = physical
    repo = example_repo(tmp_path / "models", files)
    try:
        yield repo
    finally:
        kill_instances(repo)


def cli(repo: Path, *args: str, code: int = 0) -> str:
    done = run_cli(*args, cwd=repo, timeout=180)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == code, (done.stdout, done.stderr)
    return done.stdout


def cli_json(repo: Path, *args: str, code: int = 0) -> Any:
    return json.loads(cli(repo, *args, "--format", "json", code=code))


def commit_program(repo: Path, text: str, message: str) -> str:
    write_files(repo, {GEOLOCATION: text})
    (repo / GEOLOCATION).chmod(0o755)
    return commit(repo, {}, message)


def dump(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def test_status_check_and_history_follow_applies_failures_and_drift(example: Path) -> None:
    first = cli_json(example, "-d", "local", "apply", "--yes")
    assert first["generation"] == 1

    status = cli_json(example, "status")
    assert status["deployment"] == "local" and status["generation"]["number"] == 1
    assert len(status["instances"]) == 9
    assert {i["state"] for i in status["instances"]} == {"active"}
    ready = {c["type"]: c for c in status["conditions"]}
    assert ready["Ready"]["status"] == "True", ready
    assert ready["Stalled"]["status"] == "False"
    assert [(m["name"], m["reachable"], m["generation"]) for m in status["machines"]] == [
        ("test1", True, 1),
        ("test2", True, 1),
    ]
    text = cli(example, "status")
    assert "Ready: True" in text and "geolocation-service@test1" in text
    assert cli(example, "check") == "No drift.\n"

    program = (example / GEOLOCATION).read_text()
    second_sha = commit_program(example, program + "\n# a harmless change\n", "touch geolocation")
    assert cli_json(example, "-d", "local", "apply", "--yes")["generation"] == 2
    broken_sha = commit_program(
        example, "#!/bin/sh\necho 'cannot start: no map data' >&2\nexit 1\n", "break geolocation"
    )
    cli(example, "-d", "local", "apply", "--yes", code=1)

    history = cli_json(example, "history")
    assert [(h["generation"], h["result"]) for h in history] == [
        (None, "rolled_back"),
        (2, "succeeded"),
        (1, "succeeded"),
    ]
    assert [h["commit"] for h in history[:2]] == [broken_sha, second_sha]
    assert [h["subject"] for h in history[:2]] == ["break geolocation", "touch geolocation"]
    assert {h["author"] for h in history} == {"Test Author"}
    assert [h["changes"] for h in history] == ["+0 ~3 -0", "+0 ~3 -0", "+9 ~0 -0"]
    assert history[2]["summary"]["toActivate"] == 9
    assert "cannot start: no map data" in history[0]["reason"]
    assert all(h["time"] and h["attempt"] for h in history)
    lines = cli(example, "history").splitlines()
    assert len(lines) == 4 and lines[0].split()[:3] == ["GEN", "TIME", "COMMIT"]
    assert lines[1].startswith("-") and "rolled back" in lines[1] and broken_sha[:12] in lines[1]
    assert lines[3].startswith("1 ") and "+9 ~0 -0" in lines[3]

    unapplied = commit(example, {"NOTES.md": "not deployed yet\n"}, "an unapplied change")
    with_git = cli_json(example, "history", "--git")
    assert with_git[0]["commit"] == unapplied and with_git[0]["result"] == "not_applied"
    assert [h["result"] for h in with_git[1:]] == ["rolled_back", "succeeded", "succeeded"]
    assert [h["commit"] for h in with_git].count(broken_sha) == 1  # attempted: not listed twice
    assert "initial models" not in {h["subject"] for h in with_git}  # before the first apply
    assert "not applied" in cli(example, "history", "--git")

    status = cli_json(example, "status")
    ready = {c["type"]: c for c in status["conditions"]}
    assert (ready["Ready"]["status"], ready["Ready"]["reason"]) == ("False", "AttemptFailed")
    assert status["generation"]["number"] == 2 and status["lastAttempt"]["status"] == "rolled_back"
    assert {i["state"] for i in status["instances"]} == {"active"}  # the old generation runs

    db = example / ".reconciler/state.db"
    before = dump(db)
    victim = "stafftracker@test2"
    pid = running_pids(example)[victim]
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    states = {i["key"]: i["state"] for i in cli_json(example, "status")["instances"]}
    assert states[victim] == "dead"
    assert {s for k, s in states.items() if k != victim} == {"active"}
    assert cli(example, "check", code=2) == f"{victim}: dead (pid {pid})\n"

    # another identity runs than the record says (as after a hand-made change)
    pid_file = example / ".reconciler/machines/test2/deployments/local/instances/room-service"
    pid_file /= "pid.json"
    running = json.loads(pid_file.read_text())
    pid_file.write_text(json.dumps({**running, "identity": "0" * 64}))
    states = {i["key"]: i["state"] for i in cli_json(example, "status")["instances"]}
    assert (states[victim], states["room-service@test2"]) == ("dead", "drifted")

    [store_path] = (example / ".reconciler/machines/test1/store").glob("*-staff-service")
    subprocess.run(["chmod", "-R", "u+w", store_path], check=True)
    subprocess.run(["rm", "-rf", store_path], check=True)
    drift = cli_json(example, "check", code=2)
    assert drift["drift"] is True
    assert [(i["kind"], i["instance"] or i["path"]) for i in drift["items"]] == [
        ("missing-path", store_path.name),  # test1
        ("drifted", "room-service@test2"),  # test2, in key order
        ("dead", victim),
    ]
    text = cli(example, "check", code=2)
    assert store_path.name in text and f"room-service@test2: runs identity {'0' * 64}" in text
    assert dump(db) == before  # status, check and history only read


def test_nothing_recorded_and_an_unreachable_machine(tmp_path: Path) -> None:
    assert "Nothing is recorded" in cli(tmp_path, "status")
    empty = cli_json(tmp_path, "status")
    assert empty["recorded"] is False and empty["instances"] == []
    assert cli_json(tmp_path, "history") == []
    assert "Nothing is recorded" in cli(tmp_path, "check")

    from reconciler.state.db import open_db

    db = open_db(tmp_path / ".reconciler/state.db", write=True)
    assert db is not None
    assert "Nothing of local is recorded" in cli(tmp_path, "-d", "local", "status")
    assert cli_json(tmp_path, "check") == {"deployment": None, "drift": False, "items": []}

    connection = {"targetEnv": "ssh", "ssh": {"host": "127.0.0.1", "port": 1}}
    db.execute("INSERT INTO deployments (name, created_at) VALUES ('far', 'now')")
    db.execute(
        "INSERT INTO machines (deployment, name, target_env, address, connection, updated_at) "
        "VALUES ('far', 'm1', 'ssh', '127.0.0.1', ?, 'now')",
        [json.dumps(connection)],
    )
    db.conn.close()
    status = cli_json(tmp_path, "status")
    [machine] = status["machines"]
    assert machine["reachable"] is False and "cannot connect" in machine["error"]
    assert status["conditions"][0]["reason"] == "NeverApplied"
    assert "no: cannot connect" in cli(tmp_path, "status")
    drift = cli_json(tmp_path, "check", code=2)
    assert [i["kind"] for i in drift["items"]] == ["unreachable"]
    assert cli(tmp_path, "history") == "No attempts of far are recorded.\n"
