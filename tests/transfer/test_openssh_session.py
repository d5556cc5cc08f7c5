"""A machine whose host key is known before connecting (pinned by the model, or recorded)
is asked and sent to in one session of the OpenSSH client: the store query, then the stream
(SPEC §3 steps 2-3). The guarantees of the other way hold: only missing paths travel, a
client that cannot start leaves the work to the asyncssh connection (an interrupted stream
leaves nothing half-made either way: test_ssh_transfer.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import clean_env, commit, run_cli
from tests.testhosts import TestHost, TestHostNetwork
from tests.transfer.test_ssh_transfer import STORE, copy, models, repo_of, store_paths

pytestmark = [pytest.mark.hosts, pytest.mark.slow]


@pytest.fixture
def two(ssh_network_factory: Callable[[int], TestHostNetwork]) -> TestHostNetwork:
    return ssh_network_factory(2)


def pinned(hosts: list[TestHost]) -> dict[str, str]:
    return models(hosts, pin={f"h{i}": h.host_key for i, h in enumerate(hosts)})


def test_a_pinned_machine_gets_its_closure_and_then_nothing_more(
    two: TestHostNetwork, tmp_path: Path
) -> None:
    repo = repo_of(tmp_path / "models", pinned(two.hosts))
    first = copy(repo)
    for i, host in enumerate(two.hosts):
        sent = set(first["transfers"][f"h{i}"]["sent"])
        assert {p.split("-", 1)[1] for p in sent} == {"lib", "app", "tools", "reconciler-agent"}
        assert store_paths(host) == sent
        app = next(p for p in sent if p.endswith("-app"))
        assert (host.var_lib / STORE / app / "bin/app").read_text() == "#!/bin/sh\necho app\n"
        assert os.access(host.var_lib / STORE / app / "bin/app", os.X_OK)
        assert not any((host.var_lib / STORE / ".incoming").iterdir())
    commit(repo, {"src/lib/data.txt": "library v2\n" * 4000})
    after = copy(repo, "--only", "h0")
    t = after["transfers"]["h0"]
    assert {p.split("-", 1)[1] for p in t["sent"]} == {"lib", "app"}
    assert t["wireBytes"] <= 1.1 * t["size"] + 64 * 1024
    again = copy(repo, "--only", "h0")
    assert again["transfers"]["h0"]["sent"] == [] and again["transfers"]["h0"]["wireBytes"] == 0


def test_a_pinned_machine_the_openssh_client_cannot_reach_gets_its_paths_over_asyncssh(
    two: TestHostNetwork, tmp_path: Path
) -> None:
    """A setting of ~/.ssh/config only OpenSSH rejects stops the session before it asks
    anything: the connection asks and sends instead."""
    host = two.hosts[0]
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("IPQoS nonsense\n")
    repo = repo_of(tmp_path / "models", pinned([host]))
    done = run_cli(
        "-d", "fleet", "apply", "--copy-only", "--format", "json",
        cwd=repo, env=clean_env(HOME=str(home)),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sent = json.loads(done.stdout)["transfers"]["h0"]["sent"]
    lib = next(p for p in sent if p.endswith("-lib"))
    assert (host.var_lib / STORE / lib / "data.txt").read_text() == "library v1\n" * 4000
    assert store_paths(host) == set(sent)


def test_an_unpacking_that_fails_there_moves_nothing_into_place(
    two: TestHostNetwork, tmp_path: Path
) -> None:
    """The paths are moved into place by a process started beside the unpacking: it must
    wait for the unpacking to succeed. A full disk there cuts it off half way."""
    host = two.hosts[0]
    repo = repo_of(tmp_path / "models", pinned([host]))
    copy(repo)
    commit(repo, {"src/lib/data.txt": "library v2\n" * 40000})  # 440 KB
    incoming = f"/var/lib/{STORE}/.incoming"
    host.run(f"mount -t tmpfs -o size=64k tmpfs {incoming}")
    try:
        done = run_cli("-d", "fleet", "apply", "--copy-only", cwd=repo)
    finally:
        host.run(f"umount {incoming}")
    assert done.returncode == 1
    assert "No space left on device" in done.stderr and "Traceback" not in done.stderr
    before = store_paths(host)
    sent = copy(repo)["transfers"]["h0"]["sent"]
    assert {p.split("-", 1)[1] for p in sent} == {"lib", "app"}, "a path counted as present"
    assert set(sent).isdisjoint(before)
    lib = next(p for p in sent if p.endswith("-lib"))
    assert (host.var_lib / STORE / lib / "data.txt").read_text() == "library v2\n" * 40000
