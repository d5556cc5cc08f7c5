"""`apply --copy-only` connects to the SSH machines the state recorded for the deployment
before it loads its models, and the session that asks and sends rides on that connection
(targets/ssh.py `warm`): one login per machine, the handshake out of the way by the time
the plan is known. Only a session to the same endpoint demanding the same host key rides
on it; the connection ends with the command."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.state.db import open_db
from reconciler.state.hostkeys import RecordedHostKeys, recorded_connections
from reconciler.targets.ssh import SshEndpoint, SshTarget, stop_warm, warm
from tests.support import commit
from tests.testhosts import TestHost, TestHostNetwork
from tests.transfer.test_ssh_transfer import STORE, copy, models, repo_of, store_paths

pytestmark = [pytest.mark.hosts, pytest.mark.slow]


@pytest.fixture
def two(ssh_network_factory: Callable[[int], TestHostNetwork]) -> TestHostNetwork:
    return ssh_network_factory(2)


def logins(host: TestHost) -> int:
    return host.sshd_log.read_text().count("Accepted publickey")


def masters(host: TestHost) -> list[int]:
    """Master connections to `host` still running, anywhere on this machine."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ControlMaster=yes" in argv and host.address.encode() in argv:
            found.append(int(pid))
    return found


def pinned(hosts: list[TestHost]) -> dict[str, str]:
    return models(hosts, pin={f"h{i}": h.host_key for i, h in enumerate(hosts)})


def test_sessions_to_a_warm_endpoint_ride_on_one_login(
    two: TestHostNetwork, tmp_path: Path
) -> None:
    host = two.hosts[0]
    db = open_db(tmp_path / "state.db", write=True)
    assert db is not None
    endpoint = SshEndpoint(host.address, host.port, host.user, str(host.identity_file), None)
    keys = RecordedHostKeys(db)
    keys.record(host.address, host.port, host.host_key)
    target = SshTarget("h0", "/var/lib/reconciler", endpoint, keys)
    before = logins(host)

    async def sessions() -> list[list[str]]:
        try:
            return [argv for _ in range(2) if (argv := await target.openssh_command("hostname"))]
        finally:
            await target.close()

    key = endpoint.demanded_key(keys)
    assert key is not None
    try:
        warm([(endpoint, key)])
        argvs = asyncio.run(sessions())
        said = [subprocess.run(a, capture_output=True, text=True, timeout=30) for a in argvs]
    finally:
        stop_warm()
    assert [(d.returncode, d.stdout) for d in said] == [(0, f"{host.name}\n")] * 2
    assert all("ControlPath=none" not in a for a in argvs), "the sessions connected on their own"
    assert logins(host) - before == 1
    assert masters(host) == []


def test_copy_only_to_a_recorded_machine_logs_in_once_and_leaves_nothing_running(
    two: TestHostNetwork, tmp_path: Path
) -> None:
    host = two.hosts[0]
    repo = repo_of(tmp_path / "models", pinned([host]))
    copy(repo)  # records h0
    commit(repo, {"src/lib/data.txt": "library v2\n" * 4000})
    before = logins(host)
    sent = copy(repo)["transfers"]["h0"]["sent"]
    assert {p.split("-", 1)[1] for p in sent} == {"lib", "app"}
    lib = next(p for p in sent if p.endswith("-lib"))
    assert (host.var_lib / STORE / lib / "data.txt").read_text() == "library v2\n" * 4000
    assert logins(host) - before == 1
    assert masters(host) == []


def test_a_machine_moved_to_another_host_gets_its_paths_there(
    two: TestHostNetwork, tmp_path: Path
) -> None:
    """The record still names the old host: the warm connection goes there, unused; the
    paths go where the models say."""
    old, new = two.hosts
    repo = repo_of(tmp_path / "models", pinned([old]))
    copy(repo)
    shutil.rmtree(old.var_lib / STORE)
    commit(repo, {"network.yaml": pinned([new])["network.yaml"]})
    sent = copy(repo)["transfers"]["h0"]["sent"]
    assert store_paths(new) == set(sent) and sent
    assert not (old.var_lib / STORE).exists()
    assert masters(old) == []


def test_a_master_that_could_not_connect_leaves_the_session_to_the_connection(
    two: TestHostNetwork, tmp_path: Path
) -> None:
    """No second try through the OpenSSH client (a silent machine would make the command
    wait out one more connect timeout): the asyncssh connection tries, and says why."""
    host = two.hosts[0]
    db = open_db(tmp_path / "state.db", write=True)
    assert db is not None
    closed = SshEndpoint(host.address, 1, host.user, str(host.identity_file), host.host_key)
    key = closed.demanded_key(RecordedHostKeys(db))
    assert key is not None
    target = SshTarget("h0", "/var/lib/reconciler", closed, RecordedHostKeys(db))

    async def session() -> list[str] | None:
        try:
            return await target.openssh_command("hostname")
        finally:
            await target.close()

    try:
        warm([(closed, key)])
        assert asyncio.run(session()) is None
    finally:
        stop_warm()
    assert masters(host) == []


def test_without_d_the_one_deployment_the_state_recorded_is_warmed(
    two: TestHostNetwork, tmp_path: Path
) -> None:
    """A repository of one deployment needs no -d: the state's one deployment is the
    one to reach early (with several, none is guessed)."""
    host = two.hosts[0]
    repo = repo_of(tmp_path / "models", pinned([host]))
    copy(repo)
    db = open_db(repo / ".reconciler" / "state.db", write=False)
    assert db is not None
    try:
        found = recorded_connections(db, None)
        assert recorded_connections(db, "another") == {}
    finally:
        db.close()
    assert list(found) == ["h0"]
    assert SshEndpoint.of(found["h0"]["ssh"]).host == host.address
