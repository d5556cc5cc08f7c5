"""The agent, run as a real subprocess from the archive that is shipped to targets, on
temporary stateDirs (Linux: /proc)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import sqlite3
import stat
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.activation.agent import (
    IDENTITY,
    SERVER,
    SLEEPER,
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


def test_process_with_http_health_lifecycle(state_dir: str, tmp_path: Path) -> None:
    pkg = make_package(tmp_path, "web", {"bin/web": SERVER})
    port = free_port()
    health = {"http": "/health", "tcp": None, "command": None, "timeout": 10}
    inst = process_instance(pkg, port, health)
    req = {"stateDir": state_dir, "deployment": "d", "identity": IDENTITY, "instance": inst}
    pid = ok("activate", req)["pid"]

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/env", timeout=5) as resp:
        seen = json.loads(resp.read())
    dep = Path(state_dir, "deployments", "d")
    # exactly the given env plus a default PATH, in the state folder (python itself adds
    # LC_CTYPE when it finds the C locale: PEP 538)
    if seen["env"].get("LC_CTYPE") in ("C.UTF-8", "C.utf8", "UTF-8"):
        del seen["env"]["LC_CTYPE"]
    assert seen["env"] == {**inst["env"], "PATH": "/usr/local/bin:/usr/bin:/bin"}
    assert seen["cwd"] == str(dep / "state" / "web")
    record = json.loads((dep / "instances" / "web" / "pid.json").read_text())
    assert record["pid"] == pid and record["identity"] == IDENTITY
    assert isinstance(record["starttime"], int)
    config = json.loads((dep / "instances" / "web" / "config.json").read_text())
    assert config["identity"] == IDENTITY and config["command"] == "bin/web"
    assert "server starting" in (dep / "instances" / "web" / "log").read_text()
    assert stat.S_IMODE(os.stat(dep / "keys").st_mode) == 0o700
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # its own session and group

    st = status_of(state_dir, inst)
    assert st == {"state": "active", "pid": pid, "identity": IDENTITY, "healthy": True}

    assert ok("deactivate", {"stateDir": state_dir, "deployment": "d", "instance": inst}) == {
        "stopped": True
    }
    assert wait_gone(pid)
    assert not (dep / "instances" / "web" / "pid.json").exists()
    assert status_of(state_dir, inst)["state"] == "missing"
    # deactivating again is harmless
    assert ok("deactivate", {"stateDir": state_dir, "deployment": "d", "instance": inst}) == {
        "stopped": False
    }


def test_activate_is_idempotent_and_replaces_other_identity(state_dir: str, tmp_path: Path) -> None:
    pkg = make_package(tmp_path, "web", {"bin/web": SERVER})
    port = free_port()
    inst = process_instance(pkg, port, {"tcp": True, "timeout": 10})
    req = {"stateDir": state_dir, "deployment": "d", "identity": IDENTITY, "instance": inst}
    first = ok("activate", req)["pid"]
    assert ok("activate", req) == {"already": True, "pid": first}

    second = ok("activate", {**req, "identity": "b" * 64})["pid"]
    assert second != first
    assert wait_gone(first)
    assert status_of(state_dir, inst)["identity"] == "b" * 64
    ok("deactivate", {"stateDir": state_dir, "deployment": "d", "instance": inst})
    assert wait_gone(second)


def test_failed_health_check_stops_the_process(state_dir: str, tmp_path: Path) -> None:
    pkg = make_package(tmp_path, "web", {"bin/web": SLEEPER})
    port = free_port()  # nothing will listen there
    inst = process_instance(pkg, port, {"http": "/health", "timeout": 1})
    req = {"stateDir": state_dir, "deployment": "d", "identity": IDENTITY, "instance": inst}
    started = time.monotonic()
    code, out, _ = run_agent("activate", req)
    assert code == 1
    assert time.monotonic() - started < 8
    assert "health check did not pass" in out["error"]
    assert "sleeper says hello" in out["log"]
    pid = int(out["log"].split("pid=")[1].split()[0])
    assert wait_gone(pid)
    assert not Path(state_dir, "deployments/d/instances/web/pid.json").exists()
    assert status_of(state_dir, inst)["state"] == "missing"


def test_command_health_check(state_dir: str, tmp_path: Path) -> None:
    pkg = make_package(tmp_path, "web", {"bin/web": SLEEPER})
    health = {"command": 'test "$GREETING" = hi && test -d .', "timeout": 5}
    inst = process_instance(pkg, None, health)
    req = {"stateDir": state_dir, "deployment": "d", "identity": IDENTITY, "instance": inst}
    pid = ok("activate", req)["pid"]
    assert status_of(state_dir, inst)["healthy"] is True
    ok("deactivate", {"stateDir": state_dir, "deployment": "d", "instance": inst})
    assert wait_gone(pid)

    inst = process_instance(pkg, None, {"command": "echo not-ready; exit 1", "timeout": "300ms"})
    code, out, _ = run_agent("activate", {**req, "instance": inst})
    assert code == 1 and "not-ready" in out["error"] and "sleeper says hello" in out["log"]


def test_process_that_exits_fails_activation(state_dir: str, tmp_path: Path) -> None:
    pkg = make_package(
        tmp_path, "web", {"bin/web": "#!/bin/sh\necho 'cannot start: boom'\nexit 3\n"}
    )
    inst = process_instance(pkg, None, None)
    req = {"stateDir": state_dir, "deployment": "d", "identity": IDENTITY, "instance": inst}
    code, out, _ = run_agent("activate", req)
    assert code == 1
    assert "exited with status 3" in out["error"]
    assert "cannot start: boom" in out["log"]

    inst = {**inst, "command": "bin/missing"}
    code, out, _ = run_agent("activate", {**req, "instance": inst})
    assert code == 1 and "could not start" in out["error"]


def test_killed_process_is_dead(state_dir: str, tmp_path: Path) -> None:
    pkg = make_package(tmp_path, "web", {"bin/web": SLEEPER})
    inst = process_instance(pkg, None, None)
    req = {"stateDir": state_dir, "deployment": "d", "identity": IDENTITY, "instance": inst}
    pid = ok("activate", req)["pid"]
    assert status_of(state_dir, inst) == {
        "state": "active",
        "pid": pid,
        "identity": IDENTITY,
        "healthy": None,
    }
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    assert status_of(state_dir, inst) == {
        "state": "dead",
        "pid": pid,
        "identity": IDENTITY,
        "healthy": None,
    }
    # a dead instance is restarted by activate, even with the same identity
    new = ok("activate", req)["pid"]
    assert new != pid
    ok("deactivate", {"stateDir": state_dir, "deployment": "d", "instance": inst})
    assert wait_gone(new)


def test_reused_pid_is_not_ours(state_dir: str, tmp_path: Path) -> None:
    pkg = make_package(tmp_path, "web", {"bin/web": SLEEPER})
    inst = process_instance(pkg, None, None)
    folder = Path(state_dir, "deployments/d/instances/web")
    folder.mkdir(parents=True)
    fake = {"pid": os.getpid(), "starttime": 1, "identity": IDENTITY}
    (folder / "pid.json").write_text(json.dumps(fake))
    assert status_of(state_dir, inst)["state"] == "dead"
    out = ok("deactivate", {"stateDir": state_dir, "deployment": "d", "instance": inst})
    assert out == {"stopped": False}
    assert not (folder / "pid.json").exists()  # and we are still here


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_process_runs_as_its_user() -> None:
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    root = Path(tempfile.mkdtemp(prefix="agent-user-"))  # tmp_path is not traversable
    try:
        root.chmod(0o755)
        pkg = make_package(root, "web", {"bin/web": SLEEPER})
        for p in (root / "store", Path(pkg), Path(pkg) / "bin"):
            p.chmod(0o755)
        inst = process_instance(pkg, None, None, user="nobody")
        state = str(root / "target")
        req = {"stateDir": state, "deployment": "d", "identity": IDENTITY, "instance": inst}
        pid = ok("activate", req)["pid"]
        uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:2]
        assert uids == [str(user.pw_uid)] * 2
        assert os.stat(Path(state, "deployments/d/state/web")).st_uid == user.pw_uid
        ok("deactivate", {"stateDir": state, "deployment": "d", "instance": inst})
        assert wait_gone(pid)
    finally:
        shutil.rmtree(root)


def test_sqlite_database_schema_and_migrations(state_dir: str, tmp_path: Path) -> None:
    pkg = make_package(
        tmp_path,
        "db",
        {
            "schema.sql": "CREATE TABLE staff(id INTEGER PRIMARY KEY, name TEXT);",
            "migrations/002-seed.sql": "INSERT INTO staff(name, email) VALUES ('ann', 'a@x');",
            "migrations/001-email.sql": "ALTER TABLE staff ADD COLUMN email TEXT;",
            "migrations/README": "not a migration",
        },
    )
    inst = sqlite_instance(pkg)
    req = {"stateDir": state_dir, "deployment": "d", "identity": IDENTITY, "instance": inst}
    out = ok("activate", req)
    db = str(Path(state_dir, "deployments/d/state/db/db.sqlite"))
    assert out == {"path": db, "applied": ["001-email.sql", "002-seed.sql"]}
    assert ok("activate", req) == {"path": db, "applied": []}
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT name, email FROM staff").fetchall() == [("ann", "a@x")]

    # a failing migration is rolled back as a whole and not recorded
    migrations = Path(pkg, "migrations")
    (migrations / "003-extra.sql").write_text("CREATE TABLE extra(x); INSERT INTO nope VALUES (1);")
    code, out, _ = run_agent("activate", req)
    assert code == 1 and "003-extra.sql" in out["error"]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "extra" not in tables
    (migrations / "003-extra.sql").write_text("CREATE TABLE extra(x);")
    assert ok("activate", req)["applied"] == ["003-extra.sql"]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM _reconciler_migrations")]
    assert sorted(names) == ["001-email.sql", "002-seed.sql", "003-extra.sql"]

    st = status_of(state_dir, inst)
    assert st == {"state": "active", "pid": None, "identity": IDENTITY, "healthy": None}
    assert ok("deactivate", {"stateDir": state_dir, "deployment": "d", "instance": inst}) == {}
    assert os.path.exists(db)  # data kept


def test_sqlite_broken_schema_leaves_no_database(state_dir: str, tmp_path: Path) -> None:
    pkg = make_package(tmp_path, "db", {"schema.sql": "CREATE TABLE a(x); THIS IS NOT SQL;"})
    inst = sqlite_instance(pkg)
    req = {"stateDir": state_dir, "deployment": "d", "identity": IDENTITY, "instance": inst}
    code, out, _ = run_agent("activate", req)
    assert code == 1 and "schema.sql" in out["error"]
    assert os.listdir(Path(state_dir, "deployments/d/state/db")) == []
    assert status_of(state_dir, inst)["state"] == "missing"


def test_lock_lease(state_dir: str) -> None:
    lock = Path(state_dir, "lock")
    first = ok("lock", {"stateDir": state_dir, "owner": "a", "ttl": 60})
    assert first["owner"] == "a" and first["expires"] > time.time() + 50
    lease = json.loads(lock.read_text())
    assert lease["owner"] == "a" and lease["host"]

    code, out, _ = run_agent("lock", {"stateDir": state_dir, "owner": "b", "ttl": 60})
    assert code == 1 and out["holder"] == "a" and out["error"].startswith("held by a until ")

    renewed = ok("lock", {"stateDir": state_dir, "owner": "a", "ttl": 60})
    assert renewed["expires"] >= first["expires"] and renewed.get("renewed")

    assert ok("unlock", {"stateDir": state_dir, "owner": "b"})["released"] is False
    assert lock.exists()

    ok("lock", {"stateDir": state_dir, "owner": "a", "ttl": 0})  # expires at once
    taken = ok("lock", {"stateDir": state_dir, "owner": "b", "ttl": 60})
    assert taken["took_over"] == "a" and taken["owner"] == "b"
    assert json.loads(lock.read_text())["owner"] == "b"

    assert ok("unlock", {"stateDir": state_dir, "owner": "a"})["released"] is False
    assert ok("unlock", {"stateDir": state_dir, "owner": "b"}) == {"released": True}
    assert not lock.exists()
    assert sorted(os.listdir(state_dir)) == []  # no temp files left


def test_snapshot_and_restore_round_trip(state_dir: str, tmp_path: Path) -> None:
    pkg = make_package(tmp_path, "db", {"schema.sql": "CREATE TABLE t(v TEXT);"})
    inst = sqlite_instance(pkg)
    req = {"stateDir": state_dir, "deployment": "d", "identity": IDENTITY, "instance": inst}
    db = ok("activate", req)["path"]
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("INSERT INTO t VALUES ('kept')")

    snap = ok("snapshot", {"stateDir": state_dir, "deployment": "d", "service": "db"})["path"]
    assert Path(snap).parent == Path(state_dir, "deployments/d/snapshots")
    assert Path(snap).name.startswith("db-") and snap.endswith(".sqlite")
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DELETE FROM t")

    restore = {"stateDir": state_dir, "deployment": "d", "service": "db", "from": snap}
    assert ok("restore", restore) == {"path": db}
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [("kept",)]

    # onto another machine that has no database yet (state moving with its service)
    other = str(tmp_path / "other")
    moved = ok("restore", {**restore, "stateDir": other})["path"]
    with contextlib.closing(sqlite3.connect(moved)) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [("kept",)]
    assert os.listdir(Path(moved).parent) == ["db.sqlite"]

    code, out, _ = run_agent("snapshot", {"stateDir": other, "deployment": "d", "service": "x"})
    assert code == 1 and "no database" in out["error"]


def test_switch_profile_and_manifest(state_dir: str) -> None:
    base = {"stateDir": state_dir, "deployment": "d"}
    assert ok("read-manifest", base) == {}
    out = ok(
        "switch-profile",
        {**base, "generation": 1, "profile": {"paths": ["p1"]}, "manifest": {"gen": 1}},
    )
    assert out == {"current": "profiles/1", "previous": None}
    dep = Path(state_dir, "deployments/d")
    assert os.readlink(dep / "current") == "profiles/1"
    out = ok(
        "switch-profile",
        {**base, "generation": 2, "profile": {"paths": ["p2"]}, "manifest": {"gen": 2}},
    )
    assert out == {"current": "profiles/2", "previous": "profiles/1"}
    assert os.readlink(dep / "current") == "profiles/2"
    assert json.loads((dep / "current").read_text()) == {"paths": ["p2"]}
    assert json.loads((dep / "profiles" / "1").read_text()) == {"paths": ["p1"]}
    assert ok("read-manifest", base) == {"gen": 2}
    assert not [p for p in os.listdir(dep) if p.startswith(".")]  # no temp files left


def wrapper_instance(pkg: str) -> dict[str, Any]:
    return {**sqlite_instance(pkg, "wrapped"), "type": "wrapper", "env": {"WHO": "me"}}


WRAPPER = """#!/bin/sh
case "$1" in
  activate) echo "activating for $WHO"; echo on > active ;;
  deactivate) rm -f active ;;
  health) test -f active ;;
  *) exit 9 ;;
esac
"""


def test_wrapper_and_package(state_dir: str, tmp_path: Path) -> None:
    pkg = make_package(tmp_path, "w", {"bin/wrapper": WRAPPER})
    inst = wrapper_instance(pkg)
    req = {"stateDir": state_dir, "deployment": "d", "identity": IDENTITY, "instance": inst}
    assert ok("activate", req) == {}
    assert Path(state_dir, "deployments/d/state/wrapped/active").exists()
    assert "activating for me" in Path(state_dir, "deployments/d/instances/wrapped/log").read_text()
    assert status_of(state_dir, inst)["state"] == "active"
    assert ok("deactivate", {"stateDir": state_dir, "deployment": "d", "instance": inst}) == {}
    assert status_of(state_dir, inst)["state"] == "dead"

    broken = make_package(
        tmp_path, "wb", {"bin/wrapper": "#!/bin/sh\necho wrapper-broke\nexit 4\n"}
    )
    code, out, _ = run_agent("activate", {**req, "instance": wrapper_instance(broken)})
    assert code == 1 and "status 4" in out["error"] and "wrapper-broke" in out["log"]

    plain = {**sqlite_instance(pkg, "tool"), "type": "package"}
    assert ok("activate", {**req, "instance": plain}) == {}
    assert status_of(state_dir, plain)["state"] == "active"
    missing = {**plain, "package": "/nonexistent/store/x"}
    items = [{**missing, "identity": None}]
    out = ok("status", {"stateDir": state_dir, "deployment": "d", "instances": items})
    assert out["instances"]["tool@m1"]["state"] == "missing"


@pytest.mark.parametrize(
    ("command", "raw"),
    [
        ("activate", b"{not json"),
        ("activate", b"[1, 2]"),
        ("activate", b"{}"),
        ("no-such-command", b"{}"),
        ("lock", b'{"stateDir": "relative/dir", "owner": "a"}'),
        ("snapshot", b'{"stateDir": "/tmp/x", "deployment": "d", "service": "../etc"}'),
        ("status", b'{"stateDir": "/tmp/x", "deployment": "d", "instances": [{"key": 1}]}'),
        (
            "snapshot",
            b'{"stateDir": "/tmp/x", "deployment": "d", "service": "p", "instance": '
            b'{"key": "p@m1", "service": "p", "type": "package", "package": "/x"}}',
        ),
    ],
)
def test_bad_requests_exit_2_without_traceback(command: str, raw: bytes) -> None:
    code, out, _ = run_agent(command, raw=raw)
    assert code == 2
    assert out["error"].startswith("bad request")
