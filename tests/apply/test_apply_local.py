"""`apply` end to end on local machines, with example-repo's StaffTracker: it deploys and
serves through all its services; moving the staff database moves its data; a change
re-activates exactly what it must; a failing health check rolls everything back."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import commit, kill_instances, make_repo, run_cli

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"


def example_files() -> dict[str, str]:
    files = {}
    for path in EXAMPLE.rglob("*"):
        if path.is_file():
            files[path.relative_to(EXAMPLE).as_posix()] = path.read_text()
    return files


def running_pids(root: Path) -> dict[str, int]:
    """instance key → pid of every process the agent recorded under this state root."""
    pids = {}
    for pid_file in root.glob(".reconciler/machines/*/deployments/*/instances/*/pid.json"):
        machine = pid_file.parts[-6]
        pids[f"{pid_file.parent.name}@{machine}"] = json.loads(pid_file.read_text())["pid"]
    return pids


def gone(pid: int) -> bool:
    """No such process, or a zombie (this sandbox's init does not reap orphans)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


def example_repo(path: Path, files: dict[str, str]) -> Path:
    """A committed repository of example-repo's files (as given), programs executable."""
    programs = [str(exe.relative_to(EXAMPLE)) for exe in EXAMPLE.glob("packages/*/bin/*")]
    return make_repo(path, files, programs=programs)


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Path]:
    repo = example_repo(tmp_path / "models", example_files())
    try:
        yield repo
    finally:
        kill_instances(repo)


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


def post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read())


def apply(repo: Path, *args: str) -> dict[str, Any]:
    done = run_cli(
        "-d", "local", "apply", "--yes", "--format", "json", *args, cwd=repo, timeout=180
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_stafftracker_deploys_and_answers_through_all_its_services(example: Path) -> None:
    result = apply(example)
    assert result["generation"] == 1
    front = result["endpoints"]["stafftracker@test1"]
    staff = get(f"{front}/api/staff")
    assert staff["staff"], staff
    row = staff["staff"][0]
    assert row["name"] and row["room"] and row.get("city")
    # both front ends, on both machines, see the same data
    assert get(f"{result['endpoints']['stafftracker@test2']}/api/staff")["staff"] == staff["staff"]
    again = run_cli("-d", "local", "apply", "--yes", cwd=example)
    assert again.returncode == 0
    assert "No changes" in again.stdout


def test_moving_the_staff_database_moves_its_data(example: Path) -> None:
    first = apply(example)
    staff_url = first["endpoints"]["staff-service@test1"]
    added = post(
        f"{staff_url}/staff", {"name": "Grace Hopper", "room": "LB02.010", "zipcode": "1012JS"}
    )
    assert added
    commit(
        example,
        {"distribution.yaml": (EXAMPLE / "distribution-moved.yaml").read_text()},
        "Move the staff service to test2",
    )
    second = apply(example)
    assert second["generation"] == 2
    assert "staff-service@test1" not in second["endpoints"]
    names = {r["name"] for r in get(f"{second['endpoints']['staff-service@test2']}/staff")}
    assert "Grace Hopper" in names
    assert "staff-service@test1" not in running_pids(example)


def test_a_change_reactivates_exactly_the_instances_whose_identity_changed(
    example: Path,
) -> None:
    apply(example)
    before = running_pids(example)
    program = example / "packages/geolocation-service/bin/geolocation-service"
    commit(
        example,
        {program.relative_to(example).as_posix(): program.read_text() + "\n# a harmless change\n"},
        "touch geolocation",
    )
    program.chmod(0o755)
    commit(example, {}, "keep it executable")
    plan = json.loads(run_cli("-d", "local", "plan", "--format", "json", cwd=example).stdout)
    changed = {c["key"] for c in plan["instances"] if c["action"] == "replace"}
    assert changed == {"geolocation-service@test1", "stafftracker@test1", "stafftracker@test2"}
    apply(example)
    after = running_pids(example)
    assert {k for k in before if before[k] != after.get(k)} == changed


def test_a_failing_health_check_rolls_back_and_the_old_generation_keeps_serving(
    example: Path,
) -> None:
    first = apply(example)
    front = first["endpoints"]["stafftracker@test1"]
    before = running_pids(example)
    program = "packages/geolocation-service/bin/geolocation-service"
    commit(
        example,
        {program: "#!/bin/sh\necho 'cannot start: no map data' >&2\nexit 1\n"},
        "break the geolocation service",
    )
    (example / program).chmod(0o755)
    commit(example, {}, "keep it executable")
    done = run_cli("-d", "local", "apply", "--yes", cwd=example, timeout=180)
    assert done.returncode == 1, done.stdout
    assert "Rolled back" in done.stderr
    assert "cannot start: no map data" in done.stderr  # the tail of its log
    assert get(f"{front}/api/staff")["staff"]
    after = running_pids(example)
    assert after.keys() == before.keys()  # the old generation, all of it, runs again
    # the broken service was restarted; stafftracker, which depends on it and rolls after
    # it (two instances: one at a time, SPEC §9), was never stopped; the others were kept
    assert {k for k in before if before[k] != after[k]} == {"geolocation-service@test1"}
    history = subprocess.run(
        [
            "sqlite3",
            str(example / ".reconciler/state.db"),
            "SELECT status FROM attempts ORDER BY started_at",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert history == ["succeeded", "rolled_back"]


def test_a_secret_never_lands_in_the_record_the_plan_or_the_store(example: Path) -> None:
    secret = "s3cr3t-value-7d1f0a"
    logical = (example / "network/logical.yaml").read_text()
    physical = (example / "network/physical-local.yaml").read_text()
    with_key = physical.replace(
        "targetEnv: local",
        "targetEnv: local\n      keys: {api-token: {env: RECONCILER_KEY_STAFF_TOKEN}}",
        1,
    )
    assert with_key != physical
    commit(example, {"network/physical-local.yaml": with_key}, "a key")
    missing = run_cli("-d", "local", "apply", "--yes", cwd=example)
    assert missing.returncode == 1
    assert "environment variable RECONCILER_KEY_STAFF_TOKEN is not set" in missing.stderr
    assert not (example / ".reconciler/machines").exists()
    done = run_cli(
        "-d", "local", "apply", "--yes", cwd=example, env={"RECONCILER_KEY_STAFF_TOKEN": secret}
    )
    assert done.returncode == 0, done.stderr
    keys = list(example.glob(".reconciler/machines/*/deployments/local/keys/api-token"))
    assert len(keys) == 1 and keys[0].read_text() == secret
    assert oct(keys[0].stat().st_mode & 0o777) == "0o400"
    plan = run_cli("-d", "local", "plan", "--format", "json", cwd=example).stdout
    found = subprocess.run(
        ["grep", "-rl", secret, str(example / ".reconciler")], capture_output=True, text=True
    ).stdout.split()
    assert found == [str(keys[0])], found
    assert secret not in plan + done.stdout + done.stderr + logical


def test_destroy_leaves_no_process_and_no_profile_behind(example: Path) -> None:
    apply(example)
    pids = running_pids(example)
    assert len(pids) == 6
    done = run_cli("-d", "local", "destroy", "--yes", cwd=example, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "9 instances taken down" in done.stdout  # the databases count too
    for pid in pids.values():
        assert gone(pid), pid
    assert running_pids(example) == {}
    assert not list(example.glob(".reconciler/machines/*/deployments/local/current"))
    assert list(example.glob(".reconciler/machines/*/deployments/local/state/staff-db/*.sqlite"))
    again = run_cli("-d", "local", "destroy", "--yes", cwd=example)
    assert "Nothing of local is deployed" in again.stdout
    redeploy = apply(example)  # and it comes back, data included
    assert get(f"{redeploy['endpoints']['stafftracker@test1']}/api/staff")["staff"]
