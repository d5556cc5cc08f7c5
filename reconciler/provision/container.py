"""`container`: a machine on this host made of Linux namespaces, reached over real SSH.

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
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.desired.state import DesiredMachine
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
SSHD = "/usr/sbin/sshd"
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
        if _listener_pid(names) and address and _wait_banner(str(address), int(port), 2.0):
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
                authorized = " ".join(public.read_text().split()[:2])
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
                _keygen(key, f"reconciler@{socket.gethostname()}")
            return key, " ".join(public.read_text().split()[:2])

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
            _keygen(key, f"root@{spec.machine}")
        (disk / "container.json").write_text(json.dumps(spec.as_json(), indent=2) + "\n")
        return " ".join(public.read_text().split()[:2])

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
        link = _ip("-o", "link", "show", "dev", names.veth, check=False)
        if f"master {spec.bridge} " not in link or "state DOWN" in link:
            return False
        inner = _ip("-n", names.netns, "-o", "-4", "addr", "show", "dev", "eth0", check=False)
        if f"inet {spec.address}/{spec.subnet.prefixlen} " not in inner:
            return False
        if _listener_pid(names) is None:
            return False
        # a busy host may answer slowly: a live container is never torn down for that
        return _wait_banner(spec.address, spec.port, 5.0)

    def _create(self, spec: _Spec) -> None:
        names = spec.names
        with _host_lock():
            self._claim_address(spec)
            self._ensure_bridge(spec)
            names.run.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_json(names.registry, spec.as_json())
            _ip(
                "-batch",
                "-",
                stdin=(
                    f"netns add {names.netns}\n"
                    f"link add {names.veth} type veth peer name eth0 netns {names.netns}\n"
                    f"link set {names.veth} master {spec.bridge}\n"
                    f"link set {names.veth} up\n"
                ),
            )
        (names.run / "disk").mkdir(exist_ok=True)
        for suffix in ("", ".pub"):
            src = names.disk / f"ssh_host_ed25519_key{suffix}"
            dst = names.run / src.name
            shutil.copyfile(src, dst)
            dst.chmod(0o600 if not suffix else 0o644)
        _write_authorized_keys(spec)
        names.config.write_text(_sshd_config(spec))
        _ip(
            "-n",
            names.netns,
            "-batch",
            "-",
            stdin=(
                f"addr add {spec.address}/{spec.subnet.prefixlen} dev eth0\n"
                "link set lo up\n"
                "link set eth0 up\n"
                f"route add default via {spec.gateway}\n"
            ),
        )
        self._spawn_sshd(spec)
        deadline = time.monotonic() + READY_TIMEOUT
        while not _wait_banner(spec.address, spec.port, 0.5):
            if time.monotonic() > deadline:
                raise ProvisionError(
                    f"machine {spec.machine}: the container's sshd does not answer on "
                    f"{spec.address}:{spec.port} after {READY_TIMEOUT:.0f} s; its log "
                    f"({names.disk / 'sshd.log'}) ends:\n{_tail(names.disk / 'sshd.log')}"
                )
            time.sleep(0.05)
        pid = _listener_pid(names)
        if pid is not None:
            stat = _proc_stat(pid)
            _write_json(names.run / "sshd.pid", {"pid": pid, "starttime": stat[2] if stat else 0})

    def _spawn_sshd(self, spec: _Spec) -> None:
        """sshd as PID 1 of new PID, mount and UTS namespaces inside the netns, detached
        (setsid -f) so it outlives this process."""
        names = spec.names
        binds = [("home", "/root"), ("tmp", "/tmp"), ("root", spec.state_dir)]
        binds = [b for b in binds if b[0] == "root" or b[1] != spec.state_dir]
        binds.sort(key=lambda b: b[1].count("/"))  # outer folders first: inner ones go on top
        script = [
            "set -e",
            "umount -l /run/netns 2>/dev/null || true",  # pin no other container's netns
            # the disk stays reachable here whatever the binds below hide
            f'mount --bind "$1" "{names.run}/disk"',
        ]
        for sub, target in binds:
            script.append(f"mkdir -p {_sh_quote(target)}")
            script.append(f'mount --bind "{names.run}/disk/{sub}" {_sh_quote(target)}')
        script += ['hostname "$2"', f'exec {SSHD} -D -e -f "$3"']
        with open(names.disk / "sshd.log", "ab") as log:
            subprocess.run(
                [
                    "setsid", "-f", "ip", "netns", "exec", names.netns,
                    "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc",
                    "--propagation", "private",
                    "sh", "-c", "\n".join(script), "sh",
                    str(names.disk), _hostname(spec.machine), str(names.config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_DAEMON_ENV,
                check=True,
            )  # fmt: skip

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
            for line in _ip("-o", "-4", "addr", "show").splitlines():
                parts = line.split()
                net = ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network
                if net.overlaps(spec.subnet):
                    raise ProvisionError(
                        f"machine {spec.machine}: the container subnet {spec.subnet} overlaps "
                        f"{net} of {parts[1]} on this host; containers need a subnet of their own"
                    )
            mac = "02:72:63:" + ":".join(spec.bridge[i : i + 2] for i in (4, 6, 8))
            _ip(
                "-batch",
                "-",
                stdin=(
                    # a fixed MAC: a bridge otherwise takes its ports' lowest, which changes as
                    # containers come and go and leaves stale ARP entries for the gateway
                    f"link add {spec.bridge} address {mac} type bridge\n"
                    f"addr add {cidr} dev {spec.bridge}\n"
                    f"link set {spec.bridge} up\n"
                ),
            )
        elif f"inet {cidr} " not in _ip("-o", "-4", "addr", "show", "dev", spec.bridge):
            _ip("addr", "add", cidr, "dev", spec.bridge)
            _ip("link", "set", spec.bridge, "up")

    @staticmethod
    def _remove_bridge_if_unused(bridge: str) -> None:
        if not Path("/sys/class/net", bridge).exists():
            return
        if not _ip("-o", "link", "show", "master", bridge, check=False).strip():
            _ip("link", "del", bridge, check=False)


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
    if not os.access(SSHD, os.X_OK):
        raise ProvisionError(
            f"machine {machine}: container machines need {SSHD} (apt-get install openssh-server)"
        )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder


def _teardown_runtime(names: ContainerNames) -> None:
    """Every process, the veth, the netns and sshd's files; the disk stays."""
    _kill_container(names)
    if Path("/sys/class/net", names.veth).exists():
        _ip("link", "del", names.veth, check=False)  # before the netns: that would be async
    if Path("/run/netns", names.netns).exists():
        _ip("netns", "del", names.netns, check=False)
    with _host_lock():
        names.registry.unlink(missing_ok=True)
    shutil.rmtree(names.run, ignore_errors=True)


def _kill_container(names: ContainerNames, timeout: float = 10.0) -> None:
    # sshd first: as PID 1 of the container its death kills everything started over SSH.
    # Found by its config too: a netns deleted by hand leaves it running, nameless.
    listeners = [p for p in _pids_with(str(names.config)) if _comm(p) == "sshd"]
    if (pid := _listener_pid(names)) is not None:
        listeners.append(pid)
    if listeners:
        _kill(listeners)
        grace = time.monotonic() + 1.0
        while _leftovers(names) and time.monotonic() < grace:
            time.sleep(0.01)
    deadline = time.monotonic() + timeout
    while pids := _leftovers(names):  # what entered the netns otherwise
        _kill(pids)
        if time.monotonic() > deadline:
            raise ProvisionError(
                f"container {names.netns}: processes {pids} survive SIGKILL; remove them by "
                "hand, then run destroy again"
            )
        time.sleep(0.01)


def _leftovers(names: ContainerNames) -> list[int]:
    return sorted(set(_pids_in_netns(names.netns)) | set(_pids_with(f"{names.run}/")))


def _pids_with(fragment: str) -> list[int]:
    """Live processes (not zombies: their command line is empty) mentioning `fragment`."""
    needle = fragment.encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            if needle in Path(f"/proc/{name}/cmdline").read_bytes():
                found.append(int(name))
        except OSError:
            continue
    return found


def _comm(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _listener_pid(names: ContainerNames) -> int | None:
    """The host pid of the container's sshd listener (PID 1 of its PID namespace)."""
    needle = str(names.config).encode()
    for pid in _pids_in_netns(names.netns):
        stat = _proc_stat(pid)
        if stat is None or stat[1] != "sshd":
            continue
        parent = _proc_stat(stat[0])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and parent is not None and parent[1] == "unshare":
            return pid
    return None


def _pids_in_netns(netns: str) -> list[int]:
    """Live processes in the netns (a zombie has left its namespaces: not counted)."""
    try:
        ns = os.stat(f"/run/netns/{netns}")
    except OSError:
        return []
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{name}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (ns.st_dev, ns.st_ino):
            found.append(int(name))
    return found


def _proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, comm, starttime) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), comm, int(fields[19])


def _wait_banner(address: str, port: int, within: float) -> bool:
    """True once an SSH server answers with its banner on address:port."""
    deadline = time.monotonic() + within
    while True:
        try:
            with socket.create_connection((address, port), timeout=0.5) as sock:
                sock.settimeout(0.5)
                if sock.recv(4).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _ip(*args: str, stdin: str | None = None, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise ProvisionError(
            f"ip {' '.join(args)} failed: {result.stderr.strip() or result.returncode}"
            + (f"\n{stdin}" if stdin else "")
        )
    return result.stdout


def _keygen(path: Path, comment: str) -> None:
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    done = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise ProvisionError(f"ssh-keygen for {path} failed: {done.stderr.strip()}")


def _write_authorized_keys(spec: _Spec) -> None:
    path = spec.names.run / "authorized_keys"
    tmp = path.with_name(".authorized_keys.tmp")
    tmp.write_text(f"{spec.authorized} reconciler\n")
    tmp.replace(path)


def _sshd_config(spec: _Spec) -> str:
    run = spec.names.run
    return (
        f"# container machine {spec.machine} of deployment {spec.deployment}: "
        f"{spec.names.disk}\n"
        f"Port {spec.port}\n"
        f"ListenAddress {spec.address}\n"
        f"HostKey {run}/ssh_host_ed25519_key\n"
        "PidFile none\n"  # it is PID 1 of its namespace; sshd.pid beside holds the host pid
        f"AuthorizedKeysFile {run}/authorized_keys\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "UseDNS no\n"
        "PrintMotd no\n"
        "PrintLastLog no\n"
        "X11Forwarding no\n"
        "MaxStartups 100:30:200\n"
        "MaxSessions 10\n"
        "Subsystem sftp internal-sftp\n"
    )


def _hostname(machine: str) -> str:
    return machine[:63]


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


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


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
