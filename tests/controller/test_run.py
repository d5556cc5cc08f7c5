"""`reconciler run` end to end, with a real Git server (git daemon on loopback) as the
remote: it deploys the head, then each new commit; a commit that fails validation leaves
the old generation serving and sets Stalled, until a good one recovers; a killed process
is re-activated by self-heal; unsigned commits are refused when allowed signers are
configured; SIGTERM during a transition leaves a consistent state and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.controller.support import (
    Controller,
    Remote,
    address,
    answer,
    hello_files,
    next_address,
    read_state,
)
from tests.support import free_port as free_port  # test_scale and test_failover import it here
from tests.support import make_repo, run_cli

pytestmark = pytest.mark.slow


def test_the_controller_follows_the_branch_recovers_and_heals(
    remote: Remote, start: Callable[..., Controller]
) -> None:
    c = start(remote.url)
    c.wait("v1 to serve", lambda: answer(c.endpoint()) == "v1")
    c.wait("Ready", lambda: c.conditions()["Ready"]["status"] == "True")

    remote.push(hello_files("v2"), "hello v2")
    c.wait("v2 to serve", lambda: answer(c.endpoint()) == "v2")

    bad = hello_files("v3")
    bad["models.yaml"] = bad["models.yaml"].replace("port: auto", "port: auto\n    colour: red")
    broken = remote.push(bad, "a typo in the models")
    stalled = c.wait(
        "Stalled", lambda: c.conditions()["Stalled"]["status"] == "True" and c.conditions()
    )
    assert stalled["Stalled"]["reason"] == "InvalidModels"
    assert "colour" in stalled["Stalled"]["message"]
    assert answer(c.endpoint()) == "v2"  # the last good generation keeps serving
    assert c.query("SELECT last_applied_sha FROM deployments")[0]["last_applied_sha"] != broken

    remote.push(hello_files("v4"), "hello v4, models fixed")
    c.wait("v4 to serve", lambda: answer(c.endpoint()) == "v4")
    c.wait("Stalled cleared", lambda: c.conditions()["Stalled"]["status"] == "False")

    # self-heal: a killed process is started again with its recorded request
    pid_file = next(Path(c.db).parent.glob("machines/m1/deployments/web/instances/hello/pid.json"))
    pid = json.loads(pid_file.read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)
    c.wait(
        "self-heal",
        lambda: json.loads(pid_file.read_text())["pid"] != pid and answer(c.endpoint()) == "v4",
    )
    c.wait("the log to say so", lambda: "self-heal re-activated hello@m1" in c.log.read_text())

    assert c.stop() == 0


def test_unsigned_commits_are_refused_with_allowed_signers(
    remote: Remote, start: Callable[..., Controller], tmp_path: Path
) -> None:
    key = tmp_path / "signing_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"author@example.test {key.with_suffix('.pub').read_text()}")
    c = start(remote.url, "--allowed-signers", str(signers))
    stalled = c.wait(
        "Stalled", lambda: c.conditions()["Stalled"]["status"] == "True" and c.conditions()
    )
    assert stalled["Stalled"]["reason"] == "UntrustedCommit"
    assert "is not signed" in stalled["Stalled"]["message"]
    assert c.query("SELECT count(*) AS n FROM attempts") == [{"n": 0}]

    remote.push(
        hello_files("signed"),
        "a signed commit",
        "gpg.format",
        "ssh",
        "user.signingkey",
        str(key),
    )
    c.wait("the signed commit to serve", lambda: answer(c.endpoint()) == "signed")


def test_sigterm_during_a_transition_settles_and_exits_0(
    remote: Remote, start: Callable[..., Controller], tmp_path: Path
) -> None:
    c = start(remote.url)
    c.wait("v1 to serve", lambda: answer(c.endpoint()) == "v1")
    remote.push(hello_files("slow", delay=4), "a slow-starting hello")
    log = Path(c.db).parent / "machines/m1/deployments/web/instances/hello/log"
    c.wait("the new version starting", lambda: log.read_text().count(" starting ") >= 2)
    reconciling = c.conditions()["Reconciling"]
    assert reconciling["status"] == "True" and reconciling["reason"] == "Applying"
    assert c.stop() == 0
    statuses = [r["status"] for r in c.query("SELECT status FROM attempts ORDER BY started_at")]
    assert statuses[0] == "succeeded" and statuses[-1] in ("rolled_back", "succeeded")
    assert "running" not in statuses
    done = run_cli(*c.state, "-d", "web", "check", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + log.read_text()  # what runs is what is recorded


def test_run_once_on_a_models_folder_inside_a_local_work_tree(tmp_path: Path) -> None:
    next_address()
    files = {f"ops/models/{k}": v for k, v in hello_files("local").items()}
    repo = make_repo(
        tmp_path / "project",
        {"README": "a project with its models inside\n", **files},
        programs=["ops/models/hello/bin/hello"],
    )
    state = tmp_path / "state.db"
    args = ("--repo", str(repo / "ops/models"), "--state", str(state), "run", "--once")
    try:
        first = run_cli(*args, cwd=tmp_path, timeout=120)
        assert first.returncode == 0, first.stderr
        assert "web: " in first.stderr and " applied in " in first.stderr
        [row] = read_state(
            str(state), "SELECT value FROM allocations WHERE key = 'port/web/hello@m1'"
        )
        assert answer(f"http://{address()}:{row['value']}/") == "local"
        again = run_cli(*args, cwd=tmp_path, timeout=120)
        assert again.returncode == 0, again.stderr
        assert " unchanged in " in again.stderr
    finally:
        run_cli("--state", str(state), "-d", "web", "destroy", "--yes", cwd=tmp_path)
