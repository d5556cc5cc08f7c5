"""Container machines: network, mount, PID and UTS namespaces with their own sshd on a
bridge, reached over real SSH; they outlive the process that made them, are found again,
repaired when broken, and leave nothing behind when destroyed."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import random
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncssh
import pytest

from reconciler.models.schema import SshSettings
from reconciler.provision import MISSING, RUNNING, STOPPED, Provisioned, ProvisionError
from reconciler.provision.container import (
    RUN_DIR,
    ContainerProvisioner,
    bridge_name,
    container_names,
)
from reconciler.state.provisioning import SqliteRecorder
from tests import testhosts as th
from tests.provision.conftest import desired_machine

REPO = Path(__file__).resolve().parents[2]


# -- without namespaces ------------------------------------------------------------------


def test_names_are_short_stable_and_distinct(tmp_path: Path) -> None:
    names = {
        container_names(root, dep, machine)
        for root in (tmp_path / "a", tmp_path / "b")
        for dep in ("prod", "test")
        for machine in ("web", "db")
    }
    assert len({n.netns for n in names}) == len({n.veth for n in names}) == 8
    assert all(len(n.netns) <= 15 and len(n.veth) <= 15 for n in names)
    assert container_names(tmp_path / "a", "prod", "web") in names  # stable
    assert (
        container_names(tmp_path / "a", "prod", "web").disk
        == (tmp_path / "a" / "containers" / "prod" / "web").resolve()
    )
    assert len(bridge_name(ipaddress.IPv4Network("10.213.0.0/16"))) <= 15


def test_bad_addresses_and_state_dirs_are_refused_first(
    tmp_path: Path, recorder: SqliteRecorder
) -> None:
    prov = ContainerProvisioner(tmp_path, "10.213.0.0/16")
    for address, state_dir, message in [
        ("10.9.0.2", None, "not a free address of the container subnet 10.213.0.0/16"),
        ("10.213.0.1", None, "its first address, 10.213.0.1, is the bridge"),
        ("not-an-ip", None, "is not an IPv4 address"),
        (None, None, "needs an address"),
        ("10.213.0.2", "/", "must be an absolute folder below /"),
    ]:
        machine = desired_machine("m1", "container", address, state_dir=state_dir)
        with pytest.raises(ProvisionError, match=f"machine m1: .*{message}"):
            prov.ensure("test", machine, recorder)
    assert recorder.all() == {}  # nothing recorded for input that will not do


def test_without_root_it_says_so(
    tmp_path: Path, recorder: SqliteRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    prov = ContainerProvisioner(tmp_path, "10.213.0.0/16")
    with pytest.raises(ProvisionError, match="machine m1: container machines need root"):
        prov.ensure("test", desired_machine("m1", "container", "10.213.0.2"), recorder)
    with pytest.raises(ProvisionError, match="need root"):
        prov.destroy("test", "m1", None, recorder)


# -- real containers -----------------------------------------------------------------------


@pytest.fixture
def subnet() -> str:
    """A /24 of 10.214.0.0/16 that nothing on this host uses (shared with other suites)."""
    try:
        th.check_environment()
    except th.HostsUnavailableError as exc:
        th._unavailable(str(exc))
    taken = th._networks_in_use()
    candidates = list(range(1, 255))
    random.shuffle(candidates)
    for x in candidates:
        net = ipaddress.IPv4Network(f"10.214.{x}.0/24")
        if not any(n.overlaps(net) for n in taken):
            return str(net)
    pytest.skip("no free /24 in 10.214.0.0/16")


@dataclasses.dataclass
class Fleet:
    """Container machines of one test; whatever is left is destroyed at the end."""

    subnet: str
    made: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    recorders: dict[Path, SqliteRecorder] = dataclasses.field(default_factory=dict)

    def open(self, root: Path) -> tuple[ContainerProvisioner, SqliteRecorder]:
        if root not in self.recorders:
            self.recorders[root] = SqliteRecorder.open(root / "state.db", "test")
        return ContainerProvisioner(root, self.subnet), self.recorders[root]

    def address(self, host: int) -> str:
        return str(ipaddress.IPv4Network(self.subnet)[host])

    def ensure(self, root: Path, name: str, host: int) -> Provisioned:
        prov, recorder = self.open(root)
        self.made.append((root, name))
        return prov.ensure("test", desired_machine(name, "container", self.address(host)), recorder)


@pytest.fixture
def fleet(subnet: str) -> Iterator[Fleet]:
    f = Fleet(subnet)
    try:
        yield f
    finally:
        for root, name in f.made:
            prov, recorder = f.open(root)
            prov.destroy("test", name, None, recorder)
        for recorder in f.recorders.values():
            recorder.close()


async def _ssh(p: Provisioned, command: str) -> str:
    assert p.ssh_host and p.host_key and p.identity_file
    async with asyncssh.connect(
        p.ssh_host,
        p.ssh_port,
        username=p.ssh_user,
        client_keys=[p.identity_file],
        known_hosts=asyncssh.import_known_hosts(f"{p.ssh_host} {p.host_key}\n"),
        agent_path=None,
        config=None,
        connect_timeout=10,
    ) as conn:
        result = await conn.run(command, check=True, timeout=30)
        return str(result.stdout)


def ssh(p: Provisioned, command: str) -> str:
    return asyncio.run(_ssh(p, command))


def live_pids_with(marker: str) -> list[int]:
    """Processes (not zombies) whose command line holds `marker`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            if marker.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                found.append(int(name))
        except OSError:
            continue
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


ENSURE_IN_A_CHILD = textwrap.dedent(
    """
    import dataclasses, json, sys
    from pathlib import Path

    from reconciler.desired.state import DesiredMachine
    from reconciler.provision.container import ContainerProvisioner
    from reconciler.state.provisioning import SqliteRecorder

    root, subnet, name, address = sys.argv[1:]
    machine = DesiredMachine(
        name=name, target_env="container", address=address, ssh=None, state_dir=None,
        max_parallel=4, compression="auto", profile=(), keys={}, properties={}, provider={},
        closure=(),
    )
    recorder = SqliteRecorder.open(Path(root) / "state.db", "test")
    made = ContainerProvisioner(Path(root), subnet).ensure("test", machine, recorder)
    print(json.dumps(dataclasses.asdict(made)))
    """
)


@pytest.mark.hosts
def test_a_container_machine_from_creation_to_destruction(fleet: Fleet, tmp_path: Path) -> None:
    root = tmp_path / "state"
    address = fleet.address(2)
    # made by a process that exits: the machine outlives it
    done = subprocess.run(
        [sys.executable, "-c", ENSURE_IN_A_CHILD, str(root), fleet.subnet, "web", address],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    made = Provisioned(**json.loads(done.stdout))
    fleet.made.append((root, "web"))
    names = container_names(root, "test", "web")
    assert made.provider_id == names.netns
    assert (made.address, made.ssh_host, made.ssh_port, made.ssh_user) == (
        address,
        address,
        22,
        "root",
    )
    assert made.identity_file == str(root.resolve() / "containers" / "id_ed25519")
    pid_file = json.loads((names.run / "sshd.pid").read_text())

    # real SSH with the generated key and the pinned host key; a machine of its own
    marker = f"marker-{uuid.uuid4().hex}"
    out = ssh(
        made, f"hostname; cat /proc/1/comm; echo $HOME; echo hi > /var/lib/reconciler/{marker}"
    )
    assert out.split() == ["web", "sshd", "/root"]
    assert (names.disk / "root" / marker).read_text() == "hi\n"
    assert not Path("/var/lib/reconciler", marker).exists()
    # a service started over SSH, detached, as activation starts them
    ssh(made, f"setsid sh -c 'sleep 1000; : {marker}' </dev/null >/dev/null 2>&1 &")
    assert live_pids_with(marker)

    # found again: the same sshd, nothing made anew
    prov, recorder = fleet.open(root)
    again = prov.ensure("test", desired_machine("web", "container", address), recorder)
    assert again == made
    assert json.loads((names.run / "sshd.pid").read_text()) == pid_file
    assert prov.observe("test", "web", made.provider_id) == RUNNING
    record = recorder.get("web")
    assert record is not None and (record.state, record.provider_id) == (RUNNING, names.netns)

    # destroyed: no netns, veth, process, folder, registry entry or (unused) bridge left
    prov.destroy("test", "web", made.provider_id, recorder)
    assert (
        names.netns
        not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    )
    assert not Path("/sys/class/net", names.veth).exists()
    assert not Path("/sys/class/net", bridge_name(ipaddress.IPv4Network(fleet.subnet))).exists()
    assert live_pids_with(marker) == []
    assert live_pids_with(str(names.config)) == []
    assert not names.disk.exists() and not names.run.exists()
    assert not (RUN_DIR / f"{names.netns}.json").exists()
    assert recorder.get("web") is None
    assert prov.observe("test", "web", made.provider_id) == MISSING
    prov.destroy("test", "web", made.provider_id, recorder)  # again: nothing to do


@pytest.mark.hosts
def test_a_broken_container_is_made_again_with_its_disk(fleet: Fleet, tmp_path: Path) -> None:
    root = tmp_path / "state"
    made = fleet.ensure(root, "db", 3)
    ssh(made, "mkdir -p /var/lib/reconciler/state && echo kept > /var/lib/reconciler/state/f")
    names = container_names(root, "test", "db")
    os.kill(json.loads((names.run / "sshd.pid").read_text())["pid"], 9)  # sshd dies
    prov = ContainerProvisioner(root, fleet.subnet)
    assert prov.observe("test", "db", made.provider_id) == STOPPED
    again = fleet.ensure(root, "db", 3)
    assert again == made  # same address, same host key, same client key
    assert ssh(again, "cat /var/lib/reconciler/state/f") == "kept\n"
    # gone altogether (as after a reboot of this host): made again from its disk
    subprocess.run(["ip", "netns", "del", names.netns], check=True)
    assert prov.observe("test", "db", made.provider_id) == MISSING
    assert fleet.ensure(root, "db", 3) == made
    assert ssh(made, "cat /var/lib/reconciler/state/f") == "kept\n"
    # the old sshd, left running in its nameless netns, went: one listener, the new one
    listeners = [p for p in live_pids_with(str(names.config)) if comm(p) == "sshd"]
    assert listeners == [json.loads((names.run / "sshd.pid").read_text())["pid"]]


@pytest.mark.hosts
def test_containers_reach_each_other_and_never_share_an_address(
    fleet: Fleet, tmp_path: Path
) -> None:
    root = tmp_path / "one"
    with ThreadPoolExecutor(3) as pool:  # as apply makes them: in parallel threads
        made = list(pool.map(lambda i: fleet.ensure(root, f"m{i}", 10 + i), range(3)))
    assert len({m.host_key for m in made}) == 3
    probe = (
        "python3 -c 'import socket, sys; s = socket.create_connection((sys.argv[1], 22), 5); "
        "print(s.recv(7).decode())' "
    )
    assert ssh(made[0], probe + str(made[2].address)).startswith("SSH-2.0")
    # another state DB folder that allocated the same address is refused, not doubled
    with pytest.raises(ProvisionError, match=r"address .* is already used on this host"):
        fleet.ensure(tmp_path / "two", "m0", 10)
    assert ssh(made[0], "hostname") == "m0\n"


@pytest.mark.hosts
def test_the_models_ssh_settings_and_state_dir_are_used(fleet: Fleet, tmp_path: Path) -> None:
    """identityFile's public key is let in, ssh.port is where sshd listens, and a stateDir
    inside the container's private /tmp changes nothing on this host."""
    key = tmp_path / "deploy_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    root = tmp_path / "state"
    prov, recorder = fleet.open(root)
    fleet.made.append((root, "app"))
    machine = desired_machine(
        "app",
        "container",
        fleet.address(4),
        ssh=SshSettings(port=2222, identityFile=str(key)),
        state_dir="/tmp/app-state",
    )
    made = prov.ensure("test", machine, recorder)
    assert (made.ssh_port, made.identity_file) == (2222, str(key))
    ssh(made, "echo x > /tmp/app-state/f")
    names = container_names(root, "test", "app")
    assert (names.disk / "root" / "f").read_text() == "x\n"
    assert not Path("/tmp/app-state").exists()
