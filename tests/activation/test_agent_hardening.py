"""The agent under hostile or unlucky conditions (issue 13): a port another process already
answers on, a package link that leads out of the package, a user that does not exist, a
process slow to stop. Real processes and files, the archive as shipped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.activation.agent import (
    IDENTITY,
    SERVER,
    SLEEPER,
    gone,
    make_package,
    ok,
    process_instance,
    run_agent,
    sqlite_instance,
    status_of,
    wait_gone,
)
from tests.support import free_port

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")

# answers every GET with 200, like a healthy instance would
SQUATTER = """
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("listening", flush=True)
server.serve_forever()
"""


# the instance: serves on its port, or says why it cannot and exits 1
BINDER = f"""#!{sys.executable}
import http.server, os, sys
try:
    server = http.server.HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), None)
except OSError as e:
    sys.exit(f"cannot listen: {{e.strerror}}")
server.serve_forever()
"""


@pytest.fixture
def squatter() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """Another process already answering on a port: (the port, the process)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SQUATTER, str(port)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"listening\n"
        yield port, proc
    finally:
        proc.kill()
        proc.wait()


def activate(state_dir: str, inst: dict[str, Any]) -> tuple[int, Any]:
    req = {"stateDir": state_dir, "deployment": "d", "identity": IDENTITY, "instance": inst}
    code, out, _ = run_agent("activate", req)
    return code, out


def deactivate(state_dir: str, inst: dict[str, Any]) -> dict[str, Any]:
    return ok("deactivate", {"stateDir": state_dir, "deployment": "d", "instance": inst})


@pytest.mark.parametrize("health", [{"http": "/health"}, {"tcp": True}])
def test_a_port_answered_by_another_process_fails_activation(
    state_dir: str, tmp_path: Path, squatter: tuple[int, Any], health: dict[str, Any]
) -> None:
    port, other = squatter
    pkg = make_package(tmp_path, "web", {"bin/web": BINDER})
    inst = process_instance(pkg, port, {**health, "timeout": 5})
    code, out = activate(state_dir, inst)
    assert code == 1, out
    assert out["error"].startswith("web@m1: the process exited with status 1")
    assert f"another process (pid {other.pid}) holds that port" in out["error"]
    assert "cannot listen: Address already in use" in out["log"]
    assert other.poll() is None  # the other process is not ours to stop
    assert not Path(state_dir, "deployments/d/instances/web/pid.json").exists()


def test_a_live_instance_that_never_binds_its_port_is_not_healthy(
    state_dir: str, tmp_path: Path, squatter: tuple[int, Any]
) -> None:
    port, other = squatter
    pkg = make_package(tmp_path, "web", {"bin/web": SLEEPER})  # alive, listens nowhere
    inst = process_instance(pkg, port, {"http": "/health", "timeout": 1})
    code, out = activate(state_dir, inst)
    assert code == 1
    assert "health check did not pass within 1 s" in out["error"]
    assert f"127.0.0.1:{port} answers, but another process (pid {other.pid})" in out["error"]
    pid = int(out["log"].split("pid=")[1].split()[0])
    assert wait_gone(pid)


def test_status_of_an_instance_whose_port_another_process_holds(
    state_dir: str, tmp_path: Path, squatter: tuple[int, Any]
) -> None:
    """A running instance, and another process answering on the port it was given."""
    port, _ = squatter
    pkg = make_package(tmp_path, "web", {"bin/web": SLEEPER})
    inst = process_instance(pkg, port, {"command": "true", "timeout": 5})
    pid = ok(
        "activate",
        {"stateDir": state_dir, "deployment": "d", "identity": IDENTITY, "instance": inst},
    )["pid"]
    probed = {**inst, "health": {"tcp": True, "timeout": 5}}
    assert status_of(state_dir, probed)["healthy"] is False
    deactivate(state_dir, inst)
    assert wait_gone(pid)


def test_a_port_bound_by_a_child_in_the_instance_group_is_the_instance(
    state_dir: str, tmp_path: Path
) -> None:
    """A shell script that starts the server as its child (no exec): the group answers."""
    pkg = make_package(
        tmp_path,
        "web",
        {"bin/server": SERVER, "bin/web": '#!/bin/sh\n"$(dirname "$0")/server"\necho done\n'},
    )
    port = free_port()
    inst = process_instance(pkg, port, {"http": "/health", "timeout": 10})
    code, out = activate(state_dir, inst)
    assert code == 0, out
    assert status_of(state_dir, inst)["healthy"] is True
    deactivate(state_dir, inst)
    assert wait_gone(out["pid"])


@pytest.fixture
def secret(tmp_path: Path) -> str:
    """A file outside every package (on a `local` machine: one only the controller has)."""
    (tmp_path / "secret.sql").write_text("ControllerOnlySecret4711 is the password\n")
    return "ControllerOnlySecret4711"  # SQLite would quote it: near "…": syntax error


def test_a_schema_link_out_of_the_package_is_not_followed(
    state_dir: str, tmp_path: Path, secret: str
) -> None:
    pkg = make_package(tmp_path, "db", {"README": "a database"})
    os.symlink(tmp_path / "secret.sql", Path(pkg, "schema.sql"))
    code, out = activate(state_dir, sqlite_instance(pkg))
    assert code == 1
    assert out["error"] == (
        f"db@m1: schema.sql is a symbolic link that leads out of its package {pkg}: "
        "the agent reads only files inside the package"
    )
    assert secret not in json.dumps(out) and "secret.sql" not in json.dumps(out)
    assert os.listdir(Path(state_dir, "deployments/d/state/db")) == []


def test_a_migration_link_out_of_the_package_is_not_followed(
    state_dir: str, tmp_path: Path, secret: str
) -> None:
    pkg = make_package(tmp_path, "db", {"schema.sql": "CREATE TABLE t(x);"})
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(tmp_path / "secret.sql", outside / "001-leak.sql")
    os.symlink(outside, Path(pkg, "migrations"))  # the folder itself leads out
    code, out = activate(state_dir, sqlite_instance(pkg))
    assert code == 1 and "migrations is a symbolic link that leads out" in out["error"]
    assert secret not in json.dumps(out) and "001-leak" not in json.dumps(out)

    os.remove(Path(pkg, "migrations"))
    Path(pkg, "migrations").mkdir()
    os.symlink(tmp_path / "secret.sql", Path(pkg, "migrations/001-leak.sql"))
    code, out = activate(state_dir, sqlite_instance(pkg))
    assert code == 1 and "migrations/001-leak.sql is a symbolic link" in out["error"]
    assert secret not in json.dumps(out)


def test_a_link_inside_the_package_is_followed(state_dir: str, tmp_path: Path) -> None:
    pkg = make_package(tmp_path, "db", {"sql/schema.sql": "CREATE TABLE t(x);"})
    os.symlink("sql/schema.sql", Path(pkg, "schema.sql"))
    out = ok(
        "activate",
        {
            "stateDir": state_dir,
            "deployment": "d",
            "identity": IDENTITY,
            "instance": sqlite_instance(pkg),
        },
    )
    assert out["applied"] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="a user is only switched to as root")
@pytest.mark.parametrize("kind", ["process", "sqlite-database"])
def test_a_missing_user_names_the_instance(state_dir: str, tmp_path: Path, kind: str) -> None:
    pkg = make_package(tmp_path, "web", {"bin/web": SLEEPER, "schema.sql": ""})
    inst = {**process_instance(pkg, None, None), "type": kind, "user": "no-such-user-4711"}
    code, out = activate(state_dir, inst)
    assert code == 1
    assert out["error"].startswith("web@m1: no such user on this machine: no-such-user-4711")


SLOW_TO_STOP = """#!/bin/sh
trap 'sleep 1.5; echo stopped > "$RECONCILER_STATE/stopped"; exit 0' TERM
echo "up pid=$$"
while :; do sleep 0.1; done
"""

DEAF = """#!/bin/sh
trap '' TERM
echo "up pid=$$"
while :; do sleep 0.1; done
"""


def started(state_dir: str, tmp_path: Path, program: str) -> tuple[dict[str, Any], int]:
    pkg = make_package(tmp_path, "web", {"bin/web": program})
    inst = process_instance(pkg, None, None)
    inst["env"]["RECONCILER_STATE"] = str(Path(state_dir, "deployments/d/state/web"))
    code, out = activate(state_dir, inst)
    assert code == 0, out
    return inst, out["pid"]


def members(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] not in "ZX":
                found.append(int(entry))
    return found


def test_deactivate_returns_once_a_slow_process_has_exited(state_dir: str, tmp_path: Path) -> None:
    inst, pid = started(state_dir, tmp_path, SLOW_TO_STOP)
    t0 = time.monotonic()
    assert deactivate(state_dir, inst) == {"stopped": True}
    assert time.monotonic() - t0 >= 1.4
    assert gone(pid) and members(pid) == []  # already, not eventually
    assert Path(state_dir, "deployments/d/state/web/stopped").read_text() == "stopped\n"


@pytest.mark.slow
def test_deactivate_kills_what_ignores_sigterm_after_10_s(state_dir: str, tmp_path: Path) -> None:
    inst, pid = started(state_dir, tmp_path, DEAF)
    t0 = time.monotonic()
    assert deactivate(state_dir, inst) == {"stopped": True}
    assert 10 <= time.monotonic() - t0 < 20
    assert gone(pid) and members(pid) == []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
