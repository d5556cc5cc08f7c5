"""Real OpenSSH test hosts in Linux network namespaces, for end-to-end SSH deployment tests.

Topology of one run (``TestHostNetwork``)::

    root namespace                         netns rth-<runid>-<i>  (one per host)
    bridge rthb-<runid> 10.231.X.1/24 ---- veth rthv<runid>-<i> <-> eth0 10.231.X.(10+i)/24
                                                                   default via 10.231.X.1

Every host is the product's namespace machine (``reconciler/provision/namespace_machine.py``,
what a ``container`` machine is made of): ``/usr/sbin/sshd -D -e`` inside its network
namespace plus private mount, UTS and PID namespaces: ``/var/lib`` is a bind mount of
``<workdir>/host<i>/var-lib`` (visible from the outside as ``TestHost.var_lib``), the hostname
is ``host<i>`` and sshd is PID 1 of the host, so it reaps orphans and killing it takes every
process of the host down with it.

``/root`` and ``/tmp`` are private (empty) per host as well (``<workdir>/host<i>/root``,
``.../tmp``): logins then do not run the real root's ~/.bashrc (which may e.g. run pyenv and
would be shared, and mutated, by all hosts), and get sshd's standard PATH
``/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`` (python3 is the system one).
Everything else (/usr, /etc, /var/log, /run, ...) is the real machine's: deployment code under
test must not write there unless that is intended.

X is chosen per run under a lock in ``/run/reconciler-testhosts/``, where each run also records
its owning pid so that ``cleanup_stale()`` can remove the leftovers of runs that died without
tearing down (SIGKILL, power loss of the test process, ...).

Needs root, iproute2, util-linux (unshare, mount) and openssh-server/-client. The pytest
fixtures skip with a reason when that is missing, or fail when the environment variable CI is
"true".
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import pytest

from reconciler.provision import namespace_machine as nm

__all__ = [
    "REGISTRY_DIR",
    "HostsUnavailableError",
    "RemoteCommandError",
    "TestHost",
    "TestHostNetwork",
    "check_environment",
    "cleanup",
    "cleanup_stale",
    "network_of",
    "ssh_hosts",
    "ssh_hosts_factory",
    "ssh_network_factory",
]

REGISTRY_DIR = Path("/run/reconciler-testhosts")
SUBNET_PREFIX = "10.231"
FIRST_HOST_OCTET = 10
MAX_HOSTS = 240
READY_TIMEOUT = 10.0

_NETNS_PREFIX = "rth-"  # netns:  rth-<runid>-<i>
_BRIDGE_PREFIX = "rthb-"  # bridge: rthb-<runid>          (11 chars)
_VETH_PREFIX = "rthv"  # veth:   rthv<runid>-<i>       (<= 14 chars for i <= 999)
_RUNID_LEN = 6


class HostsUnavailableError(RuntimeError):
    """The machine cannot run test hosts (not root, sshd/ip missing, no namespaces...)."""


class RemoteCommandError(subprocess.CalledProcessError):
    """A command run on a test host via ``TestHost.run`` failed; str() shows its output."""

    def __str__(self) -> str:
        text = super().__str__()
        for label, value in (("stdout", self.stdout), ("stderr", self.stderr)):
            if value:
                text += f"\n--- {label} ---\n{str(value)[-4000:]}"
        return text


@dataclass(frozen=True)
class TestHost:
    """One test host reachable via ssh from the root namespace (and from the other hosts)."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    name: str
    address: str
    port: int
    user: str
    host_key: str
    identity_file: Path
    known_hosts_line: str
    netns: str
    var_lib: Path
    known_hosts_file: Path
    sshd_log: Path = field(compare=False)
    sshd_config: Path = field(compare=False)

    def deployment(self) -> dict[str, Any]:
        """A model's `deployment` of a machine that is this host (its key pinned)."""
        ssh = {"host": self.address, "identityFile": str(self.identity_file)}
        return {"targetEnv": "ssh", "ssh": {**ssh, "hostKey": self.host_key}}

    def ssh_command(self) -> list[str]:
        """argv for ``ssh`` reaching this host non-interactively; append the remote command.

        Ignores ~/.ssh/config, /etc/ssh/ssh_config and any agent; verifies the host key
        strictly against the per-run known_hosts file that lists all hosts of the run.
        The destination is the last element: insert further ssh options before it, and
        note that for ssh the *first* value given for an option wins.
        """
        return [
            "ssh",
            "-F", "/dev/null",
            "-i", str(self.identity_file),
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", "ForwardAgent=no",
            "-o", f"UserKnownHostsFile={self.known_hosts_file}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "UpdateHostKeys=no",
            "-o", "CheckHostIP=no",
            "-o", "ConnectTimeout=5",
            "-o", "KexAlgorithms=^curve25519-sha256",  # the default PQ kex costs ~0.1 s
            "-o", "LogLevel=ERROR",
            "-p", str(self.port),
            f"{self.user}@{self.address}",
        ]  # fmt: skip

    def run(
        self, command: str, check: bool = True, *, timeout: float | None = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the host via ssh; stdout/stderr are captured as text.

        With ``check`` a non-zero exit status raises ``RemoteCommandError`` (a
        ``CalledProcessError`` whose message includes the output). Exit status 255 is
        ssh's own failure (connection, host key, authentication).
        """
        argv = [*self.ssh_command(), "--", command]
        result = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RemoteCommandError(result.returncode, argv, result.stdout, result.stderr)
        return result


# --------------------------------------------------------------------------------------------
# small helpers


def _pid_alive(pid: int, starttime: int | None) -> bool:
    stat = nm.proc_stat(pid)
    try:
        if stat is None or Path(f"/proc/{pid}/cmdline").read_bytes() == b"":  # gone/zombie
            return False
    except OSError:
        return False
    return starttime is None or stat[2] == starttime


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# environment check


_env_reason: list[str | None] = []


def check_environment() -> None:
    """Raise HostsUnavailableError with a helpful reason if test hosts cannot run here."""
    if not _env_reason:
        _env_reason.append(_environment_problem())
    if _env_reason[0] is not None:
        raise HostsUnavailableError(_env_reason[0])


def _environment_problem() -> str | None:
    if not os.path.exists("/proc/self/ns/net"):
        return "needs Linux network namespaces (/proc/self/ns/net missing)"
    if os.geteuid() != 0:
        return "needs root (creates network namespaces, veths and a bridge); run as root"
    if not os.access(nm.SSHD, os.X_OK):
        return f"{nm.SSHD} not found (apt-get install openssh-server)"
    for tool, package in (
        ("ip", "iproute2"),
        ("unshare", "util-linux"),
        ("mount", "mount"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
    ):
        if shutil.which(tool) is None:
            return f"'{tool}' not found on PATH (apt-get install {package})"
    # Everything we need, tried out in a throw-away set of namespaces.
    probe = subprocess.run(
        [
            "unshare", "--net", "--mount", "--uts", "--pid", "--fork", "--mount-proc",
            "--propagation", "private", "sh", "-c",
            "ip link add rthp0 type bridge && ip link add rthp1 type veth peer name rthp2"
            " && mount --bind /tmp /mnt",
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        return (
            "cannot create namespaces/bridge/veth/bind mounts here "
            f"(unprivileged container?): {probe.stderr.strip()}"
        )
    return None


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"SSH test hosts unavailable, and CI=true forbids skipping: {reason}")
    pytest.skip(f"SSH test hosts unavailable: {reason}")


# --------------------------------------------------------------------------------------------
# run registry in /run/reconciler-testhosts


@contextlib.contextmanager
def _registry_lock() -> Iterator[None]:
    REGISTRY_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(REGISTRY_DIR / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_registry() -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    if not REGISTRY_DIR.is_dir():
        return entries
    for path in REGISTRY_DIR.glob("*.json"):
        try:
            entries[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            entries[path.stem] = {}  # unreadable: treated as stale
    return entries


def _entry_alive(entry: dict[str, Any]) -> bool:
    pid = entry.get("pid")
    return isinstance(pid, int) and _pid_alive(pid, entry.get("starttime"))


def _runid_of(name: str, prefix: str) -> str | None:
    if not name.startswith(prefix):
        return None
    runid = name[len(prefix) : len(prefix) + _RUNID_LEN]
    return runid if len(runid) == _RUNID_LEN else None


def _our_objects() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Netns names and link names that look like ours, grouped by runid."""
    netns: dict[str, list[str]] = {}
    for line in nm.ip("netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        runid = _runid_of(name, _NETNS_PREFIX)
        if runid:
            netns.setdefault(runid, []).append(name)
    links: dict[str, list[str]] = {}
    for line in nm.ip("-o", "link", "show").splitlines():
        parts = line.split(":", 2)
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        runid = _runid_of(name, _BRIDGE_PREFIX) or _runid_of(name, _VETH_PREFIX)
        if runid:
            links.setdefault(runid, []).append(name)
    return netns, links


def _destroy_run(runid: str, netns: list[str], links: list[str]) -> list[str]:
    removed: list[str] = []
    marker = f"{REGISTRY_DIR}/{runid}/"
    for ns in netns:
        nm.kill_machine(ns, marker)
    # sshds whose netns name is gone already (e.g. deleted by hand)
    pids = nm.pids_with(marker)
    nm.kill(pids)
    removed += [f"process {pid}" for pid in pids]
    # veths before netns: deleting the netns would delete them only asynchronously
    commands = [f"link del {name}" for name in sorted(links, key=lambda n: n.startswith("rthb"))]
    commands += [f"netns del {ns}" for ns in netns]
    if commands:
        nm.ip("-force", "-batch", "-", stdin="\n".join(commands) + "\n", check=False)
    removed += [f"link {name}" for name in links] + [f"netns {ns}" for ns in netns]
    shutil.rmtree(REGISTRY_DIR / runid, ignore_errors=True)
    (REGISTRY_DIR / f"{runid}.json").unlink(missing_ok=True)
    return removed


def cleanup() -> tuple[list[str], list[str]]:
    """Remove leftovers of dead runs; returns (removed objects, descriptions of live runs)."""
    removed: list[str] = []
    live: list[str] = []
    with _registry_lock():
        entries = _read_registry()
        netns, links = _our_objects()
        for runid in sorted(set(entries) | set(netns) | set(links)):
            entry = entries.get(runid, {})
            if runid in entries and _entry_alive(entry):
                live.append(
                    f"run {runid}: pid {entry['pid']}, subnet {entry.get('subnet')}, "
                    f"workdir {entry.get('workdir')}"
                )
                continue
            removed += _destroy_run(runid, netns.get(runid, []), links.get(runid, []))
    return removed, live


def cleanup_stale() -> None:
    """Remove namespaces, links and sshds of earlier runs whose owning process is dead."""
    cleanup()


# --------------------------------------------------------------------------------------------
# the network


@dataclass
class _HostState:
    host: TestHost
    index: int
    veth: str
    config: Path
    proc: subprocess.Popen[bytes] | None = None


_NETWORKS: dict[str, TestHostNetwork] = {}


def network_of(host: TestHost) -> TestHostNetwork:
    """The (open) TestHostNetwork a host belongs to, e.g. to ``cut`` a fixture's host."""
    try:
        return _NETWORKS[host.netns]
    except KeyError:
        raise LookupError(f"{host.name} ({host.netns}) belongs to no open network") from None


class TestHostNetwork:
    """N sshd test hosts on a private bridge; a context manager, closed also at exit.

    ``workdir`` must be empty or not exist yet (and contain no whitespace); it receives the
    client key pair (``id_ed25519``), ``known_hosts``, ``hosts.json``, ``ssh_config``
    (``ssh -F <workdir>/ssh_config host1`` works by hand) and per host ``host<i>/`` with
    ``sshd.log`` and ``var-lib/``, ``root/``, ``tmp/`` (the host's /var/lib, /root and /tmp).
    These files are left in place on close() for debugging. sshd's own files (sshd_config,
    host key, pid file, the shared authorized_keys) are in ``run_dir`` =
    /run/reconciler-testhosts/<runid>/, removed on close() like namespaces, links, processes.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class

    def __init__(self, count: int, workdir: Path) -> None:
        if not 0 <= count <= MAX_HOSTS:
            raise ValueError(f"count must be between 0 and {MAX_HOSTS}, got {count}")
        self.workdir = Path(workdir).resolve()
        if any(c.isspace() for c in str(self.workdir)):
            raise ValueError(f"workdir must not contain whitespace: {self.workdir!r}")
        if self.workdir.exists() and any(self.workdir.iterdir()):
            raise ValueError(f"workdir must be empty or not exist: {self.workdir}")
        check_environment()

        self.hosts: list[TestHost] = []
        self._states: list[_HostState] = []
        self._closed = False
        self._registered = False
        self.runid = ""
        self.subnet = 0
        self.bridge = ""
        self.bridge_address = ""
        self.identity_file = self.workdir / "id_ed25519"
        self.known_hosts_file = self.workdir / "known_hosts"
        # sshd's own files live in /run: the host cannot see workdir if it is under /tmp etc.
        self.run_dir = REGISTRY_DIR  # set to REGISTRY_DIR/<runid> once registered
        self.authorized_keys_file = self.run_dir / "authorized_keys"
        self.hosts_json = self.workdir / "hosts.json"
        self.ssh_config_file = self.workdir / "ssh_config"  # for `ssh -F FILE host1` by hand
        atexit.register(self.close)
        try:
            self._setup(count)
        except BaseException:
            self.close()
            raise

    # -- public API -----------------------------------------------------------------------------

    def __enter__(self) -> TestHostNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_host(self) -> TestHost:
        """Start one more host on this (running) network; known_hosts is updated."""
        self._check_open()
        index = len(self._states) + 1
        if index > MAX_HOSTS:
            raise ValueError(f"at most {MAX_HOSTS} hosts per network")
        (state,) = self._start_hosts([index])
        return state.host

    def cut(self, host: TestHost) -> None:
        """Take the host's link down: packets to/from it are dropped (connections hang)."""
        nm.ip("link", "set", self._state(host).veth, "down")

    def restore(self, host: TestHost) -> None:
        """Undo ``cut``; returns once the host's sshd is reachable again."""
        nm.ip("link", "set", self._state(host).veth, "up")
        self._wait_ready([self._state(host)])

    def throttle(self, host: TestHost, rate: str | None) -> None:
        """Limit traffic towards the host to `rate` (tc syntax, e.g. "40mbit"), or lift
        the limit with None: slow transfers give a test time to interrupt them."""
        veth = self._state(host).veth
        subprocess.run(["tc", "qdisc", "del", "dev", veth, "root"], capture_output=True)
        if rate is not None:
            subprocess.run(
                [
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    veth,
                    "root",
                    "tbf",
                    "rate",
                    rate,
                    "burst",
                    "64kb",
                    "latency",
                    "400ms",
                ],
                check=True,
                capture_output=True,
            )

    def kill_sshd_sessions(self, host: TestHost) -> None:
        """SIGKILL every sshd process of the host except the listener: open ssh connections
        drop at once; remote commands of those sessions see EOF/SIGPIPE (they are not killed).
        New connections are accepted as before."""
        state = self._state(host)
        listener = self._listener_pid(state)
        table = {pid: stat for pid in nm.all_pids() if (stat := nm.proc_stat(pid)) is not None}
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        victims: list[int] = []
        todo = list(children.get(listener, []))
        while todo:
            pid = todo.pop()
            if table[pid][1] == "sshd":
                victims.append(pid)
            todo.extend(children.get(pid, []))
        nm.kill(victims)

    def close(self) -> None:
        """Tear everything down (processes, mounts, netns, veths, bridge, registry entry).
        Idempotent; also runs at interpreter exit."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        # A second Ctrl-C/SIGTERM must not abort the teardown half-way: hold such signals
        # back until it is done (they are delivered right after).
        blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            self._teardown()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def _teardown(self) -> None:
        errors: list[str] = []
        for state in self._states:
            _NETWORKS.pop(state.host.netns, None)
            try:
                self._stop_sshd(state)
            except Exception as exc:  # keep tearing down the rest
                errors.append(f"{state.host.name}: {exc}")
        if self._registered:
            try:
                with _registry_lock():
                    netns, links = _our_objects()
                    _destroy_run(self.runid, netns.get(self.runid, []), links.get(self.runid, []))
            except Exception as exc:
                errors.append(f"network {self.runid}: {exc}")
        if errors:
            raise RuntimeError("test host teardown incomplete: " + "; ".join(errors))

    # -- setup ----------------------------------------------------------------------------------

    def _setup(self, count: int) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd privilege separation dir
        cleanup_stale()
        self._register()
        pubkey = nm.keygen(self.identity_file, f"testhosts-{self.runid}")
        self.authorized_keys_file.write_text(pubkey + "\n")
        self.known_hosts_file.write_text("")
        mac = "02:72:74:" + ":".join(self.runid[i : i + 2] for i in range(0, 6, 2))
        lines = nm.bridge_commands(self.bridge, mac, f"{self.bridge_address}/24")
        nm.ip("-batch", "-", stdin="\n".join(lines) + "\n")
        if count:
            self._start_hosts(list(range(1, count + 1)))
        else:
            self._write_hosts_json()

    def _register(self) -> None:
        with _registry_lock():
            entries = _read_registry()
            netns, links = _our_objects()
            runid = secrets.token_hex(_RUNID_LEN // 2)
            while runid in entries or runid in netns or runid in links:
                runid = secrets.token_hex(_RUNID_LEN // 2)
            used = {e.get("subnet") for e in entries.values()}
            taken = _networks_in_use()
            for x in range(1, 255):
                net = ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{x}.0/24")
                if x not in used and not any(n.subnet_of(net) for n in taken):
                    break
            else:
                raise RuntimeError(f"no free subnet in {SUBNET_PREFIX}.0.0/16")
            stat = nm.proc_stat(os.getpid())
            entry = {
                "pid": os.getpid(),
                "starttime": stat[2] if stat else None,
                "subnet": x,
                "workdir": str(self.workdir),
                "created": time.time(),
            }
            _write_atomic(REGISTRY_DIR / f"{runid}.json", json.dumps(entry, indent=2) + "\n")
            (REGISTRY_DIR / runid).mkdir(mode=0o700)
        self.runid = runid
        self.run_dir = REGISTRY_DIR / runid
        self.authorized_keys_file = self.run_dir / "authorized_keys"
        self.subnet = x
        self.bridge = f"{_BRIDGE_PREFIX}{runid}"
        self.bridge_address = f"{SUBNET_PREFIX}.{x}.1"
        self._registered = True

    def _start_hosts(self, indices: list[int]) -> list[_HostState]:
        workers = min(16, len(indices))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            states = list(pool.map(self._prepare_host, indices))  # ssh-keygen: ~10 ms each
        # root namespace side in one ip process (also avoids racing `ip netns add`s)
        lines: list[str] = []
        for st in states:
            lines += nm.veth_commands(st.host.netns, st.veth, self.bridge)
        self._states += states
        for st in states:
            _NETWORKS[st.host.netns] = self
        nm.ip("-batch", "-", stdin="\n".join(lines) + "\n")

        def configure(st: _HostState) -> None:
            nm.configure_eth0(st.host.netns, f"{st.host.address}/24", self.bridge_address)

        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(configure, states))
        for st in states:
            st.proc = self._spawn_sshd(st)
        self._wait_ready(states)
        self.hosts = [st.host for st in self._states]
        self._write_known_hosts()
        self._write_ssh_config()
        self._write_hosts_json()
        return states

    def _prepare_host(self, index: int) -> _HostState:
        name = f"host{index}"
        hostdir = self.workdir / name
        var_lib = hostdir / "var-lib"
        var_lib.mkdir(parents=True, exist_ok=True)
        (hostdir / "root").mkdir(mode=0o700, exist_ok=True)
        (hostdir / "tmp").mkdir(exist_ok=True)
        (hostdir / "tmp").chmod(0o1777)
        sshd_dir = self.run_dir / name
        sshd_dir.mkdir(mode=0o700, exist_ok=True)
        address = f"{SUBNET_PREFIX}.{self.subnet}.{FIRST_HOST_OCTET + index}"
        host_key = nm.keygen(sshd_dir / "ssh_host_ed25519_key", f"root@{name}")
        config = sshd_dir / "sshd_config"
        config.write_text(
            nm.sshd_config(
                f"test host {name} of run {self.runid}, workdir {self.workdir}",
                address,
                22,
                host_key=sshd_dir / "ssh_host_ed25519_key",
                authorized_keys=self.authorized_keys_file,
                pid_file=sshd_dir / "sshd.pid",
            )
        )
        host = TestHost(
            name=name,
            address=address,
            port=22,
            user="root",
            host_key=host_key,
            identity_file=self.identity_file,
            known_hosts_line=f"{address} {host_key}",
            netns=f"{_NETNS_PREFIX}{self.runid}-{index}",
            var_lib=var_lib,
            known_hosts_file=self.known_hosts_file,
            sshd_log=hostdir / "sshd.log",
            sshd_config=config,
        )
        return _HostState(host=host, index=index, veth=f"{_VETH_PREFIX}{self.runid}-{index}",
                          config=config)  # fmt: skip

    def _spawn_sshd(self, st: _HostState) -> subprocess.Popen[bytes]:
        hostdir = st.host.var_lib.parent
        binds = [
            (st.host.var_lib, "/var/lib"),
            (hostdir / "root", "/root"),
            (hostdir / "tmp", "/tmp"),
        ]
        # the bind that hides workdir (if it is below /tmp, /root or /var/lib) must come last
        binds.sort(key=lambda b: self.workdir.is_relative_to(b[1]))
        argv = nm.sshd_pid1_argv(st.host.netns, binds, st.host.name, st.config)
        with open(st.host.sshd_log, "ab") as log:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )

    def _wait_ready(self, states: list[_HostState]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        pending = list(states)
        while pending:
            for st in list(pending):
                if st.proc is not None and st.proc.poll() is not None:
                    raise RuntimeError(
                        f"sshd of {st.host.name} exited with {st.proc.returncode}:\n"
                        + nm.tail(st.host.sshd_log)
                    )
                if nm.answers_ssh(st.host.address, st.host.port, 0, attempt=0.25):
                    pending.remove(st)
            if pending:
                if time.monotonic() > deadline:
                    names = ", ".join(st.host.name for st in pending)
                    raise RuntimeError(
                        f"sshd of {names} not reachable after {READY_TIMEOUT:.0f} s:\n"
                        + nm.tail(pending[0].host.sshd_log)
                    )
                time.sleep(0.01)

    def _write_known_hosts(self) -> None:
        _write_atomic(self.known_hosts_file, "".join(h.known_hosts_line + "\n" for h in self.hosts))

    def _write_ssh_config(self) -> None:
        _write_atomic(
            self.ssh_config_file,
            "".join(
                f"Host {h.name} {h.address}\n"
                f"    HostName {h.address}\n"
                f"    Port {h.port}\n"
                f"    User {h.user}\n"
                f"    IdentityFile {h.identity_file}\n"
                "    IdentitiesOnly yes\n"
                "    IdentityAgent none\n"
                "    BatchMode yes\n"
                f"    UserKnownHostsFile {h.known_hosts_file}\n"
                "    GlobalKnownHostsFile /dev/null\n"
                "    StrictHostKeyChecking yes\n"
                "    UpdateHostKeys no\n"
                "    KexAlgorithms ^curve25519-sha256\n"
                "    LogLevel ERROR\n"
                for h in self.hosts
            ),
        )

    def _write_hosts_json(self) -> None:
        doc = {
            "runid": self.runid,
            "owner_pid": os.getpid(),
            "bridge": self.bridge,
            "bridge_address": self.bridge_address,
            "identity_file": str(self.identity_file),
            "known_hosts_file": str(self.known_hosts_file),
            "ssh_config_file": str(self.ssh_config_file),
            "hosts": [
                {
                    "name": h.name,
                    "address": h.address,
                    "port": h.port,
                    "user": h.user,
                    "host_key": h.host_key,
                    "known_hosts_line": h.known_hosts_line,
                    "netns": h.netns,
                    "var_lib": str(h.var_lib),
                    "sshd_log": str(h.sshd_log),
                    "ssh_command": h.ssh_command(),
                }
                for h in self.hosts
            ],
        }
        _write_atomic(self.hosts_json, json.dumps(doc, indent=2) + "\n")

    # -- teardown and lookups -------------------------------------------------------------------

    def _stop_sshd(self, st: _HostState) -> None:
        # sshd first: as PID 1 of the host its death kills every process of the host, and
        # `unshare` reaps it and exits (killing both at once would leave a zombie where PID 1
        # of the machine does not reap orphans, e.g. in containers); then anything else that
        # entered the netns (e.g. `ip netns exec` from a test)
        nm.kill_machine(st.host.netns, f"{st.config.parent}/")
        if st.proc is not None:
            try:
                st.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(st.proc.pid, signal.SIGKILL)
                st.proc.wait(timeout=10)

    def _listener_pid(self, st: _HostState) -> int:
        if st.proc is None or st.proc.poll() is not None:
            raise RuntimeError(f"sshd of {st.host.name} is not running")
        pid = nm.listener_pid(st.host.netns, st.config)
        if pid is None:
            raise RuntimeError(f"sshd listener of {st.host.name} not found")
        return pid

    def _state(self, host: TestHost) -> _HostState:
        self._check_open()
        for st in self._states:
            if st.host.netns == host.netns:
                return st
        raise ValueError(f"{host.name} ({host.netns}) is not a host of this network")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("TestHostNetwork is closed")


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    nets: list[ipaddress.IPv4Network] = []
    for line in nm.ip("-o", "-4", "addr", "show").splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    for line in nm.ip("-4", "route", "show", "table", "all").splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest and dest[0].isdigit():
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.IPv4Network(dest, strict=False))
    return nets


# --------------------------------------------------------------------------------------------
# pytest fixtures (each stands alone, so a conftest may import any subset of them)


def _open_network(count: int, workdir: Path) -> TestHostNetwork:
    try:
        return TestHostNetwork(count, workdir)
    except HostsUnavailableError as exc:
        _unavailable(str(exc))


@pytest.fixture
def ssh_network_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[int], TestHostNetwork]]:
    """``ssh_network_factory(n)`` starts a TestHostNetwork of n hosts, closed at test end."""
    networks: list[TestHostNetwork] = []

    def factory(count: int) -> TestHostNetwork:
        net = _open_network(count, tmp_path_factory.mktemp("testhosts"))
        networks.append(net)
        return net

    try:
        yield factory
    finally:
        for net in reversed(networks):
            net.close()


@pytest.fixture
def ssh_hosts_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[int], list[TestHost]]]:
    """``ssh_hosts_factory(n)`` starts n fresh hosts, torn down at test end.
    Use ``network_of(host)`` for cut/restore/add_host/kill_sshd_sessions."""
    networks: list[TestHostNetwork] = []

    def factory(count: int) -> list[TestHost]:
        net = _open_network(count, tmp_path_factory.mktemp("testhosts"))
        networks.append(net)
        return list(net.hosts)

    try:
        yield factory
    finally:
        for net in reversed(networks):
            net.close()


@pytest.fixture(scope="session")
def ssh_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TestHost]]:
    """Three hosts shared by the whole session: don't cut them, and clean up what you write."""
    net = _open_network(3, tmp_path_factory.mktemp("testhosts"))
    try:
        yield list(net.hosts)
    finally:
        net.close()
