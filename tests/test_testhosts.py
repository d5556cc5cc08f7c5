"""Tests of the SSH test-host library (tests/testhosts.py): real sshd in network namespaces."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import testhosts as th
from tests.testhosts import TestHost, TestHostNetwork, network_of

pytestmark = pytest.mark.hosts

# make the library's fixtures available in this module (a conftest may import them as well)
ssh_hosts = th.ssh_hosts
ssh_hosts_factory = th.ssh_hosts_factory

REPO_DIR = Path(__file__).resolve().parent.parent
HostsFactory = Callable[[int], list[TestHost]]


def _sh(command: str) -> str:
    return subprocess.run(command, shell=True, capture_output=True, text=True, check=True).stdout


def _require_hosts() -> None:
    try:
        th.check_environment()
    except th.HostsUnavailableError as exc:
        th._unavailable(str(exc))


def test_each_host_answers_with_its_own_address(ssh_hosts: list[TestHost]) -> None:
    addresses = [h.address for h in ssh_hosts]
    assert len(set(addresses)) == 3
    for host in ssh_hosts:
        out = host.run("hostname; hostname -I; ip -4 -o addr show dev eth0").stdout.split("\n")
        assert out[0] == host.name
        assert out[1].split() == [host.address]
        assert f"inet {host.address}/24" in out[2]


def test_login_has_standard_path_with_python3_and_tar(ssh_hosts: list[TestHost]) -> None:
    out = ssh_hosts[0].run('echo "$PATH"; python3 -c "print(6 * 7)"; command -v python3 tar')
    path, answer, python3, tar = out.stdout.split("\n")[:4]
    assert path == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert answer == "42"
    assert python3.endswith("/bin/python3")
    assert tar.endswith("/bin/tar")


def test_var_lib_tmp_and_home_are_private_per_host(ssh_hosts: list[TestHost]) -> None:
    host1, host2 = ssh_hosts[0], ssh_hosts[1]
    name = f"marker-{uuid.uuid4().hex}"
    host1.run(f"mkdir -p /var/lib/reconciler && echo hello > /var/lib/reconciler/{name}")
    try:
        assert (host1.var_lib / "reconciler" / name).read_text() == "hello\n"
        assert not (host2.var_lib / "reconciler" / name).exists()
        assert host2.run(f"test -e /var/lib/reconciler/{name}", check=False).returncode == 1
        assert not Path("/var/lib/reconciler", name).exists()  # the real /var/lib is untouched
        # /tmp and /root (HOME) are private too
        host1.run(f"echo x > /tmp/{name} && echo y > ~/{name}")
        assert host2.run(f"ls /tmp/{name} ~/{name}", check=False).returncode != 0
        assert not Path("/tmp", name).exists()
        assert not Path("/root", name).exists()
    finally:
        (host1.var_lib / "reconciler" / name).unlink()
        host1.run(f"rm -f /tmp/{name} ~/{name}")


def test_hosts_reach_each_other(ssh_hosts: list[TestHost]) -> None:
    host1, host2 = ssh_hosts[0], ssh_hosts[1]
    probe = (
        f"import socket; s = socket.create_connection(('{host2.address}', 22), timeout=3); "
        "print(s.recv(8).decode())"
    )
    out = host1.run(f'python3 -c "{probe}"').stdout
    assert out.startswith("SSH-2.0")


def test_wrong_host_key_is_refused(ssh_hosts: list[TestHost], tmp_path: Path) -> None:
    host = ssh_hosts[0]
    other = ssh_hosts[1].host_key  # a real key, just not this host's
    bogus = tmp_path / "known_hosts"
    bogus.write_text(f"{host.address} {other}\n")
    argv = [a.replace(str(host.known_hosts_file), str(bogus)) for a in host.ssh_command()]
    result = subprocess.run(
        [*argv, "true"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30
    )
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr
    # the genuine known_hosts file still works
    assert host.run("true").returncode == 0


def test_cut_fails_connections_and_restore_heals(
    ssh_hosts_factory: HostsFactory,
) -> None:
    (host,) = ssh_hosts_factory(1)
    net = network_of(host)
    net.cut(host)
    ssh, *options = host.ssh_command()
    argv = [ssh, "-o", "ConnectTimeout=1", *options, "true"]  # ssh: first value wins
    started = time.monotonic()
    cut = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert cut.returncode == 255
    assert "timed out" in cut.stderr or "No route to host" in cut.stderr
    assert time.monotonic() - started < 4
    net.restore(host)
    assert host.run("echo back").stdout == "back\n"


def test_kill_sshd_sessions_drops_open_connections(
    ssh_hosts_factory: HostsFactory,
) -> None:
    (host,) = ssh_hosts_factory(1)
    with subprocess.Popen(
        [*host.ssh_command(), "echo started; sleep 60"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as session:
        try:
            assert session.stdout is not None
            assert select.select([session.stdout], [], [], 10)[0], "remote command didn't start"
            assert os.read(session.stdout.fileno(), 100) == b"started\n"
            network_of(host).kill_sshd_sessions(host)
            assert session.wait(timeout=5) == 255
        finally:
            session.kill()
    assert host.run("echo still listening").stdout == "still listening\n"


def test_add_host_joins_running_network(
    ssh_hosts_factory: HostsFactory,
) -> None:
    host1, host2 = ssh_hosts_factory(2)
    net = network_of(host1)
    host3 = net.add_host()
    assert host3.name == "host3"
    assert net.hosts == [host1, host2, host3]
    assert host3.known_hosts_line in host1.known_hosts_file.read_text()
    assert host3.run("hostname -I").stdout.split() == [host3.address]
    # the new host and an old one see each other
    connect = f"import socket; socket.create_connection(('{host3.address}', 22), 3)"
    assert host1.run(f'python3 -c "{connect}"').returncode == 0
    hosts_json = json.loads(net.hosts_json.read_text())
    assert [h["address"] for h in hosts_json["hosts"]] == [h.address for h in net.hosts]


def _run_leftovers(net: TestHostNetwork) -> list[str]:
    found = [ns for ns in _sh("ip netns list").split() if ns.startswith(f"rth-{net.runid}-")]
    found += [line for line in _sh("ip -o link").splitlines() if net.runid in line]
    for host in [*net.hosts]:
        pgrep = subprocess.run(
            ["pgrep", "-f", str(host.sshd_config)], capture_output=True, text=True
        )
        found += [f"process {pid}" for pid in pgrep.stdout.split()]
    if (th.REGISTRY_DIR / f"{net.runid}.json").exists() or net.run_dir.exists():
        found.append("registry entry")
    return found


def test_close_leaves_nothing_behind(tmp_path: Path) -> None:
    _require_hosts()
    net = TestHostNetwork(2, tmp_path / "net")
    session: subprocess.Popen[bytes] | None = None
    try:
        net.add_host()
        session = subprocess.Popen(
            [*net.hosts[0].ssh_command(), "sleep 60"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        net.hosts[1].run("true")
        assert len(_run_leftovers(net)) > 5  # the check itself sees a running network
    finally:
        net.close()
    try:
        assert _run_leftovers(net) == []
        assert session.wait(timeout=5) == 255  # its connection was dropped
    finally:
        session.kill()
    net.close()  # idempotent


def test_cleanup_stale_removes_runs_of_dead_processes(tmp_path: Path) -> None:
    _require_hosts()
    workdir = tmp_path / "orphan"
    # a process that starts two hosts, then gets SIGKILLed without any chance to tear down
    with subprocess.Popen(
        [
            sys.executable, "-c",
            textwrap.dedent(f"""
                import sys, time
                from pathlib import Path
                sys.path.insert(0, {str(REPO_DIR)!r})
                from tests import testhosts
                net = testhosts.TestHostNetwork(2, Path({str(workdir)!r}))
                print(net.runid, flush=True)
                time.sleep(60)
            """),
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    ) as child:  # fmt: skip
        try:
            assert child.stdout is not None
            assert select.select([child.stdout], [], [], 30)[0], "child did not start hosts"
            runid = child.stdout.readline().strip()
            assert runid, "child failed to start hosts"
            assert f"rth-{runid}-1" in _sh("ip netns list")
            th.cleanup_stale()  # the owner is alive: nothing of it is touched
            assert f"rth-{runid}-1" in _sh("ip netns list")
        finally:
            child.kill()

    th.cleanup_stale()

    assert runid not in _sh("ip netns list")
    assert runid not in _sh("ip -o link")
    pgrep = subprocess.run(["pgrep", "-f", f"{th.REGISTRY_DIR}/{runid}/"], capture_output=True)
    assert pgrep.stdout == b""
    assert not (th.REGISTRY_DIR / f"{runid}.json").exists()


def test_unavailable_environment_skips_or_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        th._unavailable("needs root")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        th._unavailable("needs root")
