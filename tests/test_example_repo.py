"""example-repo/ (StaffTracker): its models validate and plan as documented, and its
programs really work together when started with the environment SPEC §2.5 describes.

The models tests run the real `reconciler` command on a copy of example-repo committed
to a temporary Git repository (models are read from commits). The smoke test runs the
services' programs directly, without reconciler.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "example-repo"
PACKAGES = EXAMPLE / "packages"

DEPLOYMENTS = {"local", "local-moved", "containers", "failover", "ec2"}
DATABASES = ("staff-db", "room-db", "zipcode-db")
HTTP_SERVICES = ("staff-service", "room-service", "zipcode-service", "geolocation-service")
PROGRAMS = (*HTTP_SERVICES, "stafftracker")
# distribution.yaml
PLACED = {
    "staff-db@test1",
    "staff-service@test1",
    "geolocation-service@test1",
    "room-db@test2",
    "room-service@test2",
    "zipcode-db@test2",
    "zipcode-service@test2",
    "stafftracker@test1",
    "stafftracker@test2",
}
DB_OF = {"staff-service": "staff-db", "room-service": "room-db", "zipcode-service": "zipcode-db"}

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Example Tester",
    "GIT_AUTHOR_EMAIL": "tester@example.org",
    "GIT_COMMITTER_NAME": "Example Tester",
    "GIT_COMMITTER_EMAIL": "tester@example.org",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


# --- helpers ----------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", *args],
        cwd=repo,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def committed_copy(dest: Path) -> Path:
    """example-repo copied to `dest` and committed on branch main."""
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns(".reconciler", "__pycache__"))
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "StaffTracker")
    return dest


def reconciler(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real command line; the state DB lives (never created) beside the repo."""
    exe = shutil.which("reconciler")
    cmd = [exe] if exe else [sys.executable, "-m", "reconciler"]
    state = repo.parent / "state" / "state.db"
    return subprocess.run(
        [*cmd, "--repo", str(repo), "--state", str(state), *args],
        cwd=repo.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def plan_json(repo: Path, deployment: str, *args: str) -> dict[str, Any]:
    done = reconciler(repo, "-d", deployment, "plan", "--format", "json", *args)
    assert done.returncode == 0, done.stderr + done.stdout
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def by_action(plan: dict[str, Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for change in plan["instances"]:
        out.setdefault(change["action"], set()).add(change["key"])
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return committed_copy(tmp_path_factory.mktemp("example") / "repo")


# --- models -----------------------------------------------------------------------------


def test_every_deployment_validates(repo: Path) -> None:
    done = reconciler(repo, "validate")
    assert done.returncode == 0, done.stderr
    for name in DEPLOYMENTS:
        assert f"{name}: valid" in done.stdout

    done = reconciler(repo, "validate", "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["valid"] is True
    assert report["problems"] == []
    assert {d["name"] for d in report["deployments"]} == DEPLOYMENTS
    for d in report["deployments"]:
        assert d["valid"] is True
        assert (d["machines"], d["services"], d["instances"]) == (2, 8, 9), d


def test_local_plan_from_nothing(repo: Path) -> None:
    plan = plan_json(repo, "local")

    assert {(m["name"], m["action"], m["targetEnv"]) for m in plan["machines"]} == {
        ("test1", "add", "local"),
        ("test2", "add", "local"),
    }
    assert by_action(plan) == {"activate": PLACED}
    assert plan["deactivationOrder"] == []
    assert plan["moves"] == []

    order = plan["activationOrder"]
    assert sorted(order) == sorted(PLACED)
    position = {key: i for i, key in enumerate(order)}
    for service, db in DB_OF.items():
        machine = "test1" if service == "staff-service" else "test2"
        assert position[f"{db}@{machine}"] < position[f"{service}@{machine}"], order
    last_http = max(i for key, i in position.items() if key.split("@")[0] in HTTP_SERVICES)
    first_front = min(position["stafftracker@test1"], position["stafftracker@test2"])
    assert last_http < first_front, order

    # deps form the closure: the shared runtime goes to every machine with an HTTP service,
    # and the profile package (sqlite-tools) to both
    for transfer in plan["transfers"]:
        names = {p.split("-", 1)[1] for p in transfer["paths"]}
        assert {"stafftracker-common", "stafftracker", "sqlite-tools"} <= names, transfer
    assert {(p["machine"], tuple(p["new"])) for p in plan["profiles"]} == {
        ("test1", ("sqlite-tools",)),
        ("test2", ("sqlite-tools",)),
    }


def test_local_moved_deployment_places_staff_on_test2(repo: Path) -> None:
    plan = plan_json(repo, "local-moved")
    moved = {k.replace("staff-db@test1", "staff-db@test2") for k in PLACED}
    moved = {k.replace("staff-service@test1", "staff-service@test2") for k in moved}
    assert by_action(plan) == {"activate": moved}


def test_moving_staff_and_its_database_is_planned_as_a_move(tmp_path: Path) -> None:
    repo = committed_copy(tmp_path / "repo")
    (repo / "distribution.yaml").write_text((repo / "distribution-moved.yaml").read_text())
    git(repo, "commit", "-q", "-am", "Move staff-service and staff-db to test2")

    plan = plan_json(repo, "local", "--against", "HEAD~1")

    assert by_action(plan) == {
        "deactivate": {"staff-db@test1", "staff-service@test1"},
        "activate": {"staff-db@test2", "staff-service@test2"},
        "replace": {"stafftracker@test1", "stafftracker@test2"},
        "keep": {
            "geolocation-service@test1",
            "room-db@test2",
            "room-service@test2",
            "zipcode-db@test2",
            "zipcode-service@test2",
        },
    }
    assert plan["moves"] == [{"service": "staff-db", "source": "test1", "target": "test2"}]
    for change in plan["instances"]:
        if change["action"] == "replace":
            assert change["reasons"] == ["dependsOn staff-service changed"], change
        if change["key"] == "staff-db@test2":
            assert change["reasons"] == ["moved from test1"], change
    assert {m["action"] for m in plan["machines"]} == {"keep"}

    # the old graph is taken down from the top, the new one built from the bottom
    down, up = plan["deactivationOrder"], plan["activationOrder"]
    assert down.index("stafftracker@test1") < down.index("staff-service@test1")
    assert down.index("staff-service@test1") < down.index("staff-db@test1")
    assert up.index("staff-db@test2") < up.index("staff-service@test2")
    assert up.index("staff-service@test2") < min(
        up.index("stafftracker@test1"), up.index("stafftracker@test2")
    )


# --- the programs -----------------------------------------------------------------------


def _common_block(text: str) -> str:
    start = text.index("# --- stafftracker-common")
    return text[start : text.index("# --- end stafftracker-common", start)]


def test_programs_are_executable_and_carry_the_shared_code() -> None:
    library = PACKAGES / "stafftracker-common" / "lib" / "stafftracker_common" / "__init__.py"
    shared = _common_block(library.read_text())
    for name in (*PROGRAMS, "sqlite-query"):
        package = "sqlite-tools" if name == "sqlite-query" else name
        program = PACKAGES / package / "bin" / name
        assert os.access(program, os.X_OK), f"{program} is not executable"
        text = program.read_text()
        assert text.startswith("#!/usr/bin/env python3\n"), program
        if name in PROGRAMS:
            assert _common_block(text) == shared, f"{program}: the shared block drifted"


def _free_ports(n: int) -> list[int]:
    """n distinct free ports: all held at once while chosen (one at a time, the kernel
    may hand the same port out twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def _request(url: str, data: dict[str, Any] | None = None) -> tuple[int, str, dict[str, str]]:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def _dependency_env(
    name: str, host: str, port: int | None = None, path: str | None = None
) -> dict[str, str]:
    prefix = name.upper().replace("-", "_")
    env = {f"{prefix}_HOST": host}
    if port is not None:
        env |= {
            f"{prefix}_PORT": str(port),
            f"{prefix}_URL": f"http://{host}:{port}",
            f"{prefix}_HOSTS": f"{host}:{port}",
        }
    else:
        env[f"{prefix}_HOSTS"] = host
    if path is not None:
        env[f"{prefix}_PATH"] = path
    return env


@pytest.fixture
def running(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Databases created as a sqlite-database activation would, and every HTTP program
    started as a process activation would; yields each service's base URL."""
    host = "127.0.0.1"
    # stafftracker runs on both machines: iterate so that test1 comes last and wins
    machine = {s.split("@")[0]: s.split("@")[1] for s in sorted(PLACED, reverse=True)}
    db_paths = {}
    for db in DATABASES:
        path = tmp_path / "state" / db / f"{db}.sqlite"
        path.parent.mkdir(parents=True)
        with sqlite3.connect(path) as conn:
            conn.executescript((PACKAGES / db / "schema.sql").read_text())
            for migration in sorted((PACKAGES / db / "migrations").glob("[0-9]*-*.sql")):
                conn.executescript(migration.read_text())
        db_paths[db] = str(path)

    ports = dict(zip(PROGRAMS, _free_ports(len(PROGRAMS)), strict=True))
    urls = {name: f"http://{host}:{port}" for name, port in ports.items()}
    depends = {s: [db] for s, db in DB_OF.items()} | {
        "geolocation-service": [],
        "stafftracker": list(HTTP_SERVICES),
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: tmp_path / f"{name}.log" for name in PROGRAMS}
    try:
        for name in PROGRAMS:
            instance = tmp_path / "instances" / name
            instance.mkdir(parents=True)
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "RECONCILER_SERVICE": name,
                "RECONCILER_MACHINE": machine[name],
                "RECONCILER_PACKAGE": str(PACKAGES / name),
                "RECONCILER_STATE": str(tmp_path / "state" / name),
                "HOST": host,
                "PORT": str(ports[name]),
            }
            for dep in depends[name]:
                if dep in DATABASES:
                    env |= _dependency_env(dep, host, path=db_paths[dep])
                else:
                    env |= _dependency_env(dep, host, ports[dep])
            if name == "stafftracker":
                env["STAFFTRACKER_TITLE"] = "StaffTracker"
            config = instance / "config.json"
            config.write_text(json.dumps(env))
            env["RECONCILER_CONFIG"] = str(config)
            with logs[name].open("wb") as log:
                procs[name] = subprocess.Popen(
                    [str(PACKAGES / name / "bin" / name)],
                    env=env,
                    cwd=instance,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        deadline = time.monotonic() + 8
        for name in PROGRAMS:
            while True:
                assert procs[name].poll() is None, f"{name} exited:\n{logs[name].read_text()}"
                try:
                    status, _, _ = _request(urls[name] + "/health")
                    if status == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, f"{name} not healthy:\n{logs[name].read_text()}"
                time.sleep(0.05)

        yield urls

        # SIGTERM stops every program cleanly (what a process deactivation sends)
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            assert proc.wait(timeout=5) == 0, f"{name} on SIGTERM:\n{logs[name].read_text()}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)


def test_stafftracker_runs_end_to_end(running: dict[str, str]) -> None:
    status, text, _ = _request(running["stafftracker"] + "/api/staff")
    assert status == 200, text
    data = json.loads(text)
    assert data["machine"] == "test1"
    rows = {row["name"]: row for row in data["staff"]}
    assert len(rows) == 5
    sander = rows["Sander van der Burg"]
    assert (sander["room"], sander["floor"], sander["building"]) == ("HB08.230", 8, "EEMCS Tower")
    assert (sander["zipcode"], sander["city"]) == ("2628CD", "Delft")
    assert sander["email"] == "sander.van.der.burg@example.org"  # migration 001 ran
    assert rows["Ada Lovelace"]["city"] == "Rotterdam"
    assert rows["Ada Lovelace"]["building"] == "Lecture Hall Building"

    # geolocation is made up but deterministic
    status, text, _ = _request(running["geolocation-service"] + "/locate?zipcode=2628CD")
    assert status == 200
    place = json.loads(text)
    assert {k: place[k] for k in ("latitude", "longitude", "region")} == sander["location"]
    assert 50.7 < place["latitude"] < 53.6 and 3.3 < place["longitude"] < 7.3

    status, page, headers = _request(running["stafftracker"] + "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "<table>" in page and "Grace Hopper" in page and "Amsterdam" in page

    # a write through staff-service shows up in the front end
    new = {"name": "Margaret Hamilton", "room": "LB02.010", "zipcode": "1012JS"}
    status, text, headers = _request(running["staff-service"] + "/staff", new)
    assert status == 201, text
    created = json.loads(text)
    assert headers["Location"] == f"/staff/{created['id']}"
    status, text, _ = _request(running["staff-service"] + f"/staff/{created['id']}")
    assert status == 200 and json.loads(text)["name"] == "Margaret Hamilton"
    status, text, _ = _request(running["stafftracker"] + "/api/staff")
    margaret = {row["name"]: row for row in json.loads(text)["staff"]}["Margaret Hamilton"]
    assert (margaret["building"], margaret["floor"], margaret["city"]) == (
        "Lecture Hall Building",
        2,
        "Amsterdam",
    )

    # bad input is refused, not stored
    assert _request(running["staff-service"] + "/staff", {"name": "Nobody"})[0] == 400
    assert _request(running["staff-service"] + "/staff/999")[0] == 404
    assert _request(running["room-service"] + "/rooms/HB08.250")[0] == 200
    assert _request(running["zipcode-service"] + "/zipcodes/9999ZZ")[0] == 404
