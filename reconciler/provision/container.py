"""`container`: a machine on this host made of Linux namespaces, reached over real SSH
(the machine itself is built by namespace_machine.py; this is the provisioner over it).

One container is:

    root namespace                                netns rc-<hash>
    bridge rcbr<hash of subnet>  <subnet .1>  ---  veth rcv<hash> <-> eth0 <address>/<prefix>
                                                   default via the bridge address
    /run/reconciler-containers/rc-<hash>/          sshd's files (config, host key copy,
                                                   authorized_keys, pid file)
    <state_root>/containers/<deployment>/<machine>/   the machine's disk: root/ (its stateDir),
                                                   home/ (/root), tmp/ (/tmp), its host key,
                                                   sshd.log, container.json

and a daemonized `sshd -D` as PID 1 of its own PID namespace (so it reaps orphans, and
its death takes every process of the container with it), in a private mount namespace
where stateDir, /root and /tmp are bind mounts of the disk's folders, and a UTS
namespace with the machine's name as host name. The rest of the file system is this
host's: the container is a simulation of a machine, not a security boundary. A missing
stateDir is created (empty) on this host as the mount point.

sshd's files live under /run, not on the disk: the state DB folder may lie under /tmp or
/root, which the container's own /tmp and /root hide. The disk keeps the host key, so a
container made again (after a reboot of this host, or a repair) keeps its identity and
its stateDir.

Names derive from a hash of (state DB folder, deployment, machine): netns and veth names
must fit in 15 characters. Everything shared between containers — the bridge, the
registry of addresses in /run/reconciler-containers — changes under one host-wide lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.desired.state import DesiredMachine
from reconciler.provision import namespace_machine as nm
from reconciler.provision.base import (
    MISSING,
    RUNNING,
    STOPPED,
    Provisioned,
    ProvisionError,
    Recorder,
)

PROVIDER = "container"
RUN_DIR = Path("/run/reconciler-containers")
DEFAULT_SUBNET = "10.213.0.0/16"  # as reconciler/desired/allocate.py allocates from
DEFAULT_STATE_DIR = "/var/lib/reconciler"
READY_TIMEOUT = 15.0
_DAEMON_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG": "C.UTF-8"}  # fmt: skip
_TOOLS = (("ip", "iproute2"), ("unshare", "util-linux"), ("setsid", "util-linux"),
          ("mount", "mount"), ("ssh-keygen", "openssh-client"))  # fmt: skip


@dataclass(frozen=True)
class ContainerNames:
    netns: str  # rc-<10 hex>
    veth: str  # rcv<10 hex>, the root namespace end
    disk: Path  # <state_root>/containers/<deployment>/<machine>
    run: Path  # /run/reconciler-containers/<netns>

    @property
    def registry(self) -> Path:
        return RUN_DIR / f"{self.netns}.json"

    @property
    def config(self) -> Path:
        return self.run / "sshd_config"


def container_names(state_root: Path, deployment: str, machine: str) -> ContainerNames:
    digest = hashlib.sha256(
        f"{state_root.resolve()}\0{deployment}\0{machine}".encode()
    ).hexdigest()[:10]
    return _names_of(f"rc-{digest}", state_root.resolve() / "containers" / deployment / machine)


def _names_of(netns: str, disk: Path) -> ContainerNames:
    return ContainerNames(netns, f"rcv{netns.removeprefix('rc-')}", disk, RUN_DIR / netns)


def bridge_name(subnet: ipaddress.IPv4Network) -> str:
    """One bridge per subnet: two state DBs with different subnets do not share one."""
    return "rcbr" + hashlib.sha256(str(subnet).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class _Spec:
    """What one container is made of, derived from the desired machine."""

    names: ContainerNames
    machine: str
    deployment: str
    address: str
    subnet: ipaddress.IPv4Network
    bridge: str
    gateway: str
    state_dir: str
    port: int
    user: str
    identity_file: Path
    authorized: str  # the public key allowed in

    def as_json(self) -> dict[str, Any]:
        return {
            "netns": self.names.netns,
            "veth": self.names.veth,
            "bridge": self.bridge,
            "subnet": str(self.subnet),
            "address": self.address,
            "port": self.port,
            "stateDir": self.state_dir,
            "deployment": self.deployment,
            "machine": self.machine,
            "disk": str(self.names.disk),
        }

    def detail(self) -> dict[str, Any]:
        """What the provisioning record keeps (it has the machine and deployment)."""
        return {k: v for k, v in self.as_json().items() if k not in ("machine", "deployment")}


class ContainerProvisioner:
    """Thread safe: shared objects change under a host-wide flock, the rest is per machine."""

    def __init__(self, state_root: Path, subnet: str = DEFAULT_SUBNET) -> None:
        self.state_root = state_root.resolve()
        self.subnet = ipaddress.IPv4Network(subnet)

    # -- the Provisioner protocol ----------------------------------------------------------

    def ensure(self, deployment: str, machine: DesiredMachine, recorder: Recorder) -> Provisioned:
        address, state_dir = self._check(machine)  # bad input first, then the environment
        _require_root(machine.name)
        spec = self._spec(deployment, machine, address, state_dir)
        recorder.token(machine.name, PROVIDER)
        host_key = self._prepare_disk(spec)
        if self._healthy(spec, host_key):
            _write_authorized_keys(spec)  # a new identityFile in the model takes effect
        else:
            recorder.step(machine.name, "creating", provider_id=spec.names.netns, **spec.detail())
            _teardown_runtime(spec.names)
            self._create(spec)
        recorder.step(
            machine.name, RUNNING, provider_id=spec.names.netns, hostKey=host_key, **spec.detail()
        )
        return Provisioned(
            provider_id=spec.names.netns,
            state=RUNNING,
            address=spec.address,
            ssh_host=spec.address,
            ssh_port=spec.port,
            ssh_user=spec.user,
            identity_file=str(spec.identity_file),
            host_key=host_key,
        )

    def destroy(
        self, deployment: str, machine: str, provider_id: str | None, recorder: Recorder
    ) -> None:
        _require_root(machine)
        names = container_names(self.state_root, deployment, machine)
        if provider_id and provider_id != names.netns:  # recorded under another state root
            names = _names_of(provider_id, names.disk)
        recorder.step(machine, "destroying")
        bridge = _read_json(names.registry).get("bridge") or bridge_name(self.subnet)
        _teardown_runtime(names)
        _remove_tree(names.disk)
        with contextlib.suppress(OSError):  # the deployment's folder, once empty
            names.disk.parent.rmdir()
        with _host_lock():
            self._remove_bridge_if_unused(str(bridge))
        recorder.forget(machine)

    def observe(self, deployment: str, machine: str, provider_id: str) -> str:
        names = _names_of(provider_id, container_names(self.state_root, deployment, machine).disk)
        if not Path("/run/netns", names.netns).exists():
            return MISSING
        entry = _read_json(names.registry)
        address, port = entry.get("address"), entry.get("port", 22)
        if _listener_pid(names) and address and nm.answers_ssh(str(address), int(port), 2.0):
            return RUNNING
        return STOPPED

    # -- the pieces ------------------------------------------------------------------------

    def _check(self, machine: DesiredMachine) -> tuple[str, str]:
        """The container's address and stateDir, or why they will not do."""
        name = machine.name
        if not machine.address:
            raise ProvisionError(f"machine {name}: a container machine needs an address")
        try:
            address = ipaddress.IPv4Address(machine.address)
        except ValueError:
            raise ProvisionError(
                f"machine {name}: container address {machine.address!r} is not an IPv4 address"
            ) from None
        gateway = next(self.subnet.hosts())
        if address not in self.subnet or address in (
            gateway,
            self.subnet.network_address,
            self.subnet.broadcast_address,
        ):
            raise ProvisionError(
                f"machine {name}: container address {address} is not a free address of the "
                f"container subnet {self.subnet} (its first address, {gateway}, is the bridge); "
                "leave deployment.address unset to have one allocated"
            )
        state_dir = os.path.normpath(machine.state_dir or DEFAULT_STATE_DIR)
        if not os.path.isabs(state_dir) or state_dir == "/":
            raise ProvisionError(
                f"machine {name}: stateDir {state_dir!r} must be an absolute folder below /"
            )
        return str(address), state_dir

    def _spec(
        self, deployment: str, machine: DesiredMachine, address: str, state_dir: str
    ) -> _Spec:
        name = machine.name
        ssh = machine.ssh
        names = container_names(self.state_root, deployment, name)
        if ssh and ssh.identityFile:
            identity = Path(os.path.expanduser(ssh.identityFile))
            public = identity.with_name(identity.name + ".pub")
            try:
                authorized = nm.public_key(public)
            except OSError as e:
                raise ProvisionError(
                    f"machine {name}: cannot read {public} ({e.strerror}): a container "
                    "authorizes the public key of deployment.ssh.identityFile"
                ) from None
        else:
            identity, authorized = self._client_key()
        return _Spec(
            names=names,
            machine=name,
            deployment=deployment,
            address=address,
            subnet=self.subnet,
            bridge=bridge_name(self.subnet),
            gateway=str(next(self.subnet.hosts())),
            state_dir=state_dir,
            port=ssh.port if ssh else 22,
            user=ssh.user if ssh else "root",
            identity_file=identity,
            authorized=authorized,
        )

    def _client_key(self) -> tuple[Path, str]:
        """The key reconciler logs into every container of this state DB folder with."""
        folder = self.state_root / "containers"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = folder / "id_ed25519"
        with _flock(folder / ".lock"):
            public = key.with_name(key.name + ".pub")
            if not (key.exists() and public.exists()):
                nm.keygen(key, f"reconciler@{socket.gethostname()}")
            return key, nm.public_key(public)

    def _prepare_disk(self, spec: _Spec) -> str:
        """The disk's folders and the machine's persistent host key; returns the key."""
        disk = spec.names.disk
        disk.mkdir(parents=True, exist_ok=True)
        for sub, mode in (("root", 0o755), ("home", 0o700), ("tmp", 0o1777)):
            (disk / sub).mkdir(exist_ok=True)
            (disk / sub).chmod(mode)
        key = disk / "ssh_host_ed25519_key"
        public = key.with_name(key.name + ".pub")
        if not (key.exists() and public.exists()):
            nm.keygen(key, f"root@{spec.machine}")
        (disk / "container.json").write_text(json.dumps(spec.as_json(), indent=2) + "\n")
        return nm.public_key(public)

    def _healthy(self, spec: _Spec, host_key: str) -> bool:
        """Reuse only a container that is whole and the same as wanted."""
        names = spec.names
        if not Path("/run/netns", names.netns).exists():
            return False
        entry = _read_json(names.registry)
        if {k: entry.get(k) for k in spec.as_json()} != spec.as_json():
            return False
        try:
            running_key = (names.run / "ssh_host_ed25519_key.pub").read_text()
        except OSError:
            return False
        if " ".join(running_key.split()[:2]) != host_key:
            return False
        link = nm.ip("-o", "link", "show", "dev", names.veth, check=False)
        if f"master {spec.bridge} " not in link or "state DOWN" in link:
            return False
        inner = nm.ip("-n", names.netns, "-o", "-4", "addr", "show", "dev", "eth0", check=False)
        if f"inet {spec.address}/{spec.subnet.prefixlen} " not in inner:
            return False
        if _listener_pid(names) is None:
            return False
        # a busy host may answer slowly: a live container is never torn down for that
        return nm.answers_ssh(spec.address, spec.port, 5.0)

    def _create(self, spec: _Spec) -> None:
        names = spec.names
        with _host_lock():
            self._claim_address(spec)
            self._ensure_bridge(spec)
            names.run.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_json(names.registry, spec.as_json())
            lines = nm.veth_commands(names.netns, names.veth, spec.bridge)
            nm.ip("-batch", "-", stdin="\n".join(lines) + "\n")
        (names.run / "disk").mkdir(exist_ok=True)
        for suffix in ("", ".pub"):
            src = names.disk / f"ssh_host_ed25519_key{suffix}"
            dst = names.run / src.name
            shutil.copyfile(src, dst)
            dst.chmod(0o600 if not suffix else 0o644)
        _write_authorized_keys(spec)
        names.config.write_text(_sshd_config(spec))
        nm.configure_eth0(names.netns, f"{spec.address}/{spec.subnet.prefixlen}", spec.gateway)
        self._spawn_sshd(spec)
        deadline = time.monotonic() + READY_TIMEOUT
        while not nm.answers_ssh(spec.address, spec.port, 0.5):
            if time.monotonic() > deadline:
                raise ProvisionError(
                    f"machine {spec.machine}: the container's sshd does not answer on "
                    f"{spec.address}:{spec.port} after {READY_TIMEOUT:.0f} s; its log "
                    f"({names.disk / 'sshd.log'}) ends:\n{nm.tail(names.disk / 'sshd.log')}"
                )
            time.sleep(0.05)
        pid = _listener_pid(names)
        if pid is not None:
            stat = nm.proc_stat(pid)
            _write_json(names.run / "sshd.pid", {"pid": pid, "starttime": stat[2] if stat else 0})

    def _spawn_sshd(self, spec: _Spec) -> None:
        """sshd as PID 1 of the container, detached (setsid -f) so it outlives this process.
        The disk is bound first, to a folder under /run that no later bind hides."""
        names = spec.names
        binds = [("home", "/root"), ("tmp", "/tmp"), ("root", spec.state_dir)]
        binds = [b for b in binds if b[0] == "root" or b[1] != spec.state_dir]
        binds.sort(key=lambda b: b[1].count("/"))  # outer folders first: inner ones go on top
        mounts: list[tuple[Path | str, Path | str]] = [(names.disk, names.run / "disk")]
        mounts += [(names.run / "disk" / sub, target) for sub, target in binds]
        argv = nm.sshd_pid1_argv(names.netns, mounts, spec.machine, names.config)
        with open(names.disk / "sshd.log", "ab") as log:
            subprocess.run(
                ["setsid", "-f", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_DAEMON_ENV,
                check=True,
            )

    def _claim_address(self, spec: _Spec) -> None:
        """Two state DBs on one host may allocate the same address: refuse the second."""
        for path in RUN_DIR.glob("rc-*.json"):
            other = _read_json(path)
            if (
                other.get("address") == spec.address
                and path.stem != spec.names.netns
                and Path("/run/netns", path.stem).exists()
            ):
                raise ProvisionError(
                    f"machine {spec.machine}: address {spec.address} is already used on this "
                    f"host by container machine {other.get('machine')} of deployment "
                    f"{other.get('deployment')} (disk {other.get('disk')}); containers of "
                    "different state DBs need different addresses"
                )

    def _ensure_bridge(self, spec: _Spec) -> None:
        cidr = f"{spec.gateway}/{spec.subnet.prefixlen}"
        if not Path("/sys/class/net", spec.bridge).exists():
            for line in nm.ip("-o", "-4", "addr", "show").splitlines():
                parts = line.split()
                net = ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network
                if net.overlaps(spec.subnet):
                    raise ProvisionError(
                        f"machine {spec.machine}: the container subnet {spec.subnet} overlaps "
                        f"{net} of {parts[1]} on this host; containers need a subnet of their own"
                    )
            mac = "02:72:63:" + ":".join(spec.bridge[i : i + 2] for i in (4, 6, 8))
            lines = nm.bridge_commands(spec.bridge, mac, cidr)
            nm.ip("-batch", "-", stdin="\n".join(lines) + "\n")
        elif f"inet {cidr} " not in nm.ip("-o", "-4", "addr", "show", "dev", spec.bridge):
            nm.ip("addr", "add", cidr, "dev", spec.bridge)
            nm.ip("link", "set", spec.bridge, "up")

    @staticmethod
    def _remove_bridge_if_unused(bridge: str) -> None:
        if not Path("/sys/class/net", bridge).exists():
            return
        if not nm.ip("-o", "link", "show", "master", bridge, check=False).strip():
            nm.ip("link", "del", bridge, check=False)


# -- processes, namespaces, files ----------------------------------------------------------


def _require_root(machine: str) -> None:
    if os.geteuid() != 0:
        raise ProvisionError(
            f"machine {machine}: container machines need root (network namespaces, veth, a "
            "bridge, bind mounts); run reconciler as root, or use targetEnv local"
        )
    for tool, package in _TOOLS:
        if shutil.which(tool) is None:
            raise ProvisionError(
                f"machine {machine}: container machines need {tool} (apt-get install {package})"
            )
    if not os.access(nm.SSHD, os.X_OK):
        raise ProvisionError(
            f"machine {machine}: container machines need {nm.SSHD} (apt-get install openssh-server)"
        )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder


def _teardown_runtime(names: ContainerNames) -> None:
    """Every process, the veth, the netns and sshd's files; the disk stays."""
    nm.kill_machine(names.netns, f"{names.run}/")
    if Path("/sys/class/net", names.veth).exists():
        nm.ip("link", "del", names.veth, check=False)  # before the netns: that would be async
    if Path("/run/netns", names.netns).exists():
        nm.ip("netns", "del", names.netns, check=False)
    with _host_lock():
        names.registry.unlink(missing_ok=True)
    shutil.rmtree(names.run, ignore_errors=True)


def _listener_pid(names: ContainerNames) -> int | None:
    return nm.listener_pid(names.netns, names.config)


def _write_authorized_keys(spec: _Spec) -> None:
    path = spec.names.run / "authorized_keys"
    tmp = path.with_name(".authorized_keys.tmp")
    tmp.write_text(f"{spec.authorized} reconciler\n")
    tmp.replace(path)


def _sshd_config(spec: _Spec) -> str:
    run = spec.names.run
    return nm.sshd_config(
        f"container machine {spec.machine} of deployment {spec.deployment}: {spec.names.disk}",
        spec.address,
        spec.port,
        host_key=run / "ssh_host_ed25519_key",
        authorized_keys=run / "authorized_keys",
    )


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    """An exclusive flock: between processes, and between threads (each opens its own)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    with _flock(RUN_DIR / ".lock"):
        yield


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


def _remove_tree(path: Path) -> None:
    def retry_writable(func: Any, name: str, _: Any) -> None:
        os.chmod(os.path.dirname(name), 0o700)  # store paths are made read-only
        func(name)

    if path.exists():
        shutil.rmtree(path, onerror=retry_writable)
