"""kill -9 in the middle of a transition, then apply again: the interrupted attempt is
rolled back from its journal and the new one completes. Two applies at once: one is
refused, nothing is corrupted."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.apply.test_apply_local import apply, example, get, gone, running_pids
from tests.support import RECONCILER, clean_env, commit, run_cli

__all__ = ["example"]  # the fixture, used by name

MAIN = '\nif __name__ == "__main__":\n'
SLOW = "\nimport time\n\ntime.sleep(3)  # a slow start: time to be interrupted\n"


def slow_geolocation(repo: Path) -> None:
    program = repo / "packages/geolocation-service/bin/geolocation-service"
    text = program.read_text()
    assert MAIN in text
    program.write_text(text.replace(MAIN, SLOW + MAIN))
    commit(repo, {}, "a slower geolocation service")


def activating_geolocation(repo: Path) -> bool:
    """The slow service's new version has been started (the agent logs that before its
    health check): the attempt is in the middle of its transition."""
    log = repo / ".reconciler/machines/test1/deployments/local/instances/geolocation-service/log"
    return log.exists() and log.read_text().count(" starting ") >= 2  # the old one, the new


def start_apply(repo: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [RECONCILER, "-d", "local", "apply", "--yes"],
        cwd=repo,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_during_the_transition_then_apply_again(example: Path) -> None:
    apply(example)
    slow_geolocation(example)
    proc = start_apply(example)
    db = example / ".reconciler/state.db"
    deadline = time.monotonic() + 60
    while not activating_geolocation(example):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = run_cli("-d", "local", "apply", "--yes", cwd=example, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "Settled an interrupted attempt" in done.stderr
    assert "Generation 2 of local is active" in done.stdout
    with sqlite3.connect(db) as conn:
        statuses = [r[0] for r in conn.execute("SELECT status FROM attempts ORDER BY started_at")]
    assert statuses == ["succeeded", "rolled_back", "succeeded"]
    pids = running_pids(example)
    assert len(pids) == 6 and not [k for k, p in pids.items() if gone(p)], pids
    front = f"http://{_address(example, 'test1')}:{_port(example, 'stafftracker', 'test1')}"
    assert get(f"{front}/api/staff")["staff"]
    # exactly one process per instance: nothing left over from the killed attempt
    ours = subprocess.run(
        ["pgrep", "-f", str(example / ".reconciler/machines")], capture_output=True, text=True
    ).stdout.split()
    assert len([p for p in ours if not gone(int(p))]) == 6


def test_two_applies_at_once_one_is_refused(example: Path) -> None:
    apply(example)
    slow_geolocation(example)
    first = start_apply(example)
    deadline = time.monotonic() + 60
    while not activating_geolocation(example):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second = run_cli("-d", "local", "apply", "--yes", cwd=example)
    assert second.returncode == 1
    assert "in use by apply (pid" in second.stderr
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert "Generation 2 of local is active" in out


def _address(repo: Path, machine: str) -> str:
    with sqlite3.connect(repo / ".reconciler/state.db") as conn:
        row = conn.execute(
            "SELECT value FROM allocations WHERE key = ?", [f"local-address/local/{machine}"]
        ).fetchone()
    return str(row[0])


def _port(repo: Path, service: str, machine: str) -> int:
    with sqlite3.connect(repo / ".reconciler/state.db") as conn:
        row = conn.execute(
            "SELECT port FROM instances WHERE key = ?", [f"{service}@{machine}"]
        ).fetchone()
    return int(row[0])
