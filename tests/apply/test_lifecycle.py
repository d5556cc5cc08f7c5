"""After deploying: `rollback` to an earlier generation, `gc` of old generations (and of
state with --delete-state), `reconstruct` of a lost state DB from the machines'
manifests, and `ssh` to a local machine — example-repo on local machines."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.apply.test_apply_local import EXAMPLE, get, running_pids
from tests.apply.test_status_history import GEOLOCATION, cli, cli_json, commit_program, example
from tests.support import commit, run_cli

__all__ = ["example"]  # the fixture, used by name

pytestmark = pytest.mark.slow


def apply(repo: Path) -> dict[str, object]:
    result: dict[str, object] = cli_json(repo, "-d", "local", "apply", "--yes")
    return result


def geolocation_version(repo: Path, n: int) -> str:
    text = (EXAMPLE / GEOLOCATION).read_text()
    return commit_program(repo, f"{text}\n# version {n}\n", f"geolocation version {n}")


def store_paths(repo: Path, machine: str) -> set[str]:
    store = repo / f".reconciler/machines/{machine}/store"
    return {p.name for p in store.iterdir() if not p.name.startswith(".")}


def query(repo: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(repo / ".reconciler/state.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_rollback_deploys_an_earlier_commit_again_and_pauses_auto_apply(example: Path) -> None:
    apply(example)
    first_sha = query(example, "SELECT commit_sha FROM attempts WHERE generation = 1")[0][0]
    pids_first = running_pids(example)
    head = geolocation_version(example, 2)
    apply(example)
    assert (
        running_pids(example)["geolocation-service@test1"]
        != pids_first["geolocation-service@test1"]
    )
    refused = run_cli("-d", "local", "rollback", "--to", "7", "--yes", cwd=example)
    assert refused.returncode == 1
    assert "--to 7: not a generation of local" in refused.stderr
    assert "earlier: 1" in refused.stderr

    done = run_cli("-d", "local", "rollback", "--yes", "--format", "json", cwd=example, timeout=180)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["generation"] == 3
    assert "paused until a commit newer than" in done.stderr
    assert query(example, "SELECT commit_sha FROM attempts WHERE generation = 3") == [(first_sha,)]
    assert query(example, "SELECT paused_at_sha FROM deployments") == [(head,)]
    assert get(f"{result['endpoints']['stafftracker@test1']}/api/staff")["staff"]
    back = running_pids(example)["geolocation-service@test1"]
    assert back != pids_first["geolocation-service@test1"]  # the first version, restarted
    # a new commit (apply of the head) resumes auto-apply
    geolocation_version(example, 4)
    apply(example)
    assert query(example, "SELECT paused_at_sha FROM deployments") == [(None,)]


def test_gc_keeps_the_last_generations_and_what_they_need(example: Path) -> None:
    apply(example)
    for n in (2, 3):
        geolocation_version(example, n)
        apply(example)
    before = store_paths(example, "test1")
    geolocations = {p for p in before if p.endswith("-geolocation-service")}
    assert len(geolocations) == 3
    profiles = example / ".reconciler/machines/test1/deployments/local/profiles"
    assert sorted(p.name for p in profiles.iterdir()) == ["1", "2", "3"]

    young = cli(example, "-d", "local", "gc", "--keep", "2")
    assert "kept 1 unreferenced path younger than --min-age 10m" in young
    assert (
        len({p for p in store_paths(example, "test1") if p.endswith("-geolocation-service")}) == 3
    )
    out = cli(example, "-d", "local", "gc", "--keep", "2", "--min-age", "0s")
    assert "Keeping generations 2, 3 of local." in out
    assert sorted(p.name for p in profiles.iterdir()) == ["2", "3"]
    left = {p for p in store_paths(example, "test1") if p.endswith("-geolocation-service")}
    assert len(left) == 2 and left < geolocations
    removed = geolocations - left
    assert not query(example, f"SELECT * FROM machine_paths WHERE path = '{next(iter(removed))}'")
    local_cache = {p.name for p in (example / ".reconciler/store").iterdir()}
    assert not removed & local_cache

    result = cli_json(example, "-d", "local", "gc", "--keep", "1", "--min-age", "0s")
    assert result["keptGenerations"] == [3]
    assert result["machines"]["test1"]["removedProfiles"] == [2]
    assert result["machines"]["test2"]["removedPaths"] == []  # test2 changed nothing
    cli(example, "-d", "local", "check")  # exit 0: nothing running lost a path
    # an old generation can still be rolled back to: its paths are built and sent again
    back = run_cli("-d", "local", "rollback", "--to", "1", "--yes", cwd=example, timeout=180)
    assert back.returncode == 0, back.stderr
    assert "Built 1 package: geolocation-service" in back.stderr


def test_gc_delete_state_removes_the_data_of_moved_services(example: Path) -> None:
    apply(example)
    commit(
        example,
        {"distribution.yaml": (EXAMPLE / "distribution-moved.yaml").read_text()},
        "Move the staff service to test2",
    )
    apply(example)
    old = example / ".reconciler/machines/test1/deployments/local/state/staff-db"
    new = example / ".reconciler/machines/test2/deployments/local/state/staff-db"
    assert old.exists() and new.exists()
    cli(example, "-d", "local", "gc", "--keep", "2", "--delete-state", "--min-age", "0s")
    assert old.exists()  # generation 1 placed it on test1: still kept
    out = cli(example, "-d", "local", "gc", "--keep", "1", "--delete-state", "--min-age", "0s")
    assert "test1: removed" in out and "state of 2 services" in out  # staff-db and staff-service
    assert not old.exists()
    assert new.exists()
    assert not list(example.glob(".reconciler/machines/*/deployments/local/snapshots/*"))


def test_reconstruct_rebuilds_a_lost_state_db_from_the_manifests(example: Path) -> None:
    first = apply(example)
    geolocation_version(example, 2)
    apply(example)
    db = example / ".reconciler/state.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    for backup in db.parent.glob("state.db.*"):
        backup.unlink()
    out = cli(example, "-d", "local", "reconstruct")
    assert "Reconstructed local: generation 2" in out
    assert "9 instances on 2 machines" in out
    # nothing to do, and nothing drifted: the record matches what runs
    cli(example, "-d", "local", "plan", "--exit-code")
    cli(example, "-d", "local", "check")
    assert cli_json(example, "-d", "local", "status")["generation"]["number"] == 2
    again = run_cli("-d", "local", "reconstruct", cwd=example)
    assert again.returncode == 1
    assert "already records local" in again.stderr
    # and the next apply goes on from there: generation 3, ports unchanged
    geolocation_version(example, 3)
    third = apply(example)
    assert third["generation"] == 3
    assert third["endpoints"] == first["endpoints"]


def test_ssh_runs_a_command_on_a_local_machine(example: Path) -> None:
    apply(example)
    shown = run_cli(
        "-d", "local", "ssh", "test2", "--", "cat", "deployments/local/manifest.json", cwd=example
    )
    assert shown.returncode == 0, shown.stderr
    manifest = json.loads(shown.stdout)
    assert manifest["machine"] == "test2" and manifest["generation"] == 1
    assert (
        run_cli("-d", "local", "ssh", "test1", "--", "sh", "-c", "exit 5", cwd=example).returncode
        == 5
    )
    unknown = run_cli("-d", "local", "ssh", "test9", "--", "true", cwd=example)
    assert unknown.returncode == 1
    assert "no machine test9 in deployment local (machines: test1, test2)" in unknown.stderr
