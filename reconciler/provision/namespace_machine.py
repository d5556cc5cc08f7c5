"""A machine made of Linux namespaces on this host, with sshd as its PID 1.

    root namespace                              netns <netns>
    bridge <bridge>  <gateway>/<prefix>  ---  veth <veth> <-> eth0 <address>/<prefix>
                                              default via <gateway>

sshd runs in the netns as PID 1 of its own PID namespace (so it reaps orphans, and its
death takes every process of the machine with it), in a private mount namespace where
folders of this host are bind mounted over /root, /tmp, ..., and a UTS namespace with the
machine's host name. The rest of the file system is this host's: a simulation of a
machine, not a security boundary.

These are the pieces the `container` provisioner (container.py) and the SSH test hosts
(tests/testhosts.py) both build on; naming, allocation and bookkeeping are theirs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from reconciler.provision.base import ProvisionError

SSHD = "/usr/sbin/sshd"

# sshd as PID 1: leave /run/netns (no other machine's netns is pinned by this mount
# namespace), bind the (source, target) pairs in order, name the host, exec sshd.
_PID1_SCRIPT = """set -e
umount -l /run/netns 2>/dev/null || true
host=$1 config=$2
shift 2
while [ $# -gt 0 ]; do mkdir -p "$2"; mount --bind "$1" "$2"; shift 2; done
echo "$host" > /proc/sys/kernel/hostname
exec {sshd} -D -e -f "$config"
"""


# -- the network ---------------------------------------------------------------------------


def ip(*args: str, stdin: str | None = None, check: bool = True) -> str:
    """Run `ip`; its output, or a ProvisionError with ip's message when it fails."""
    result = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise ProvisionError(
            f"ip {' '.join(args)} failed: {result.stderr.strip() or result.returncode}"
            + (f"\n{stdin}" if stdin else "")
        )
    return result.stdout


def bridge_commands(bridge: str, mac: str, cidr: str) -> list[str]:
    """`ip -batch` lines making a bridge with the gateway address. A fixed MAC: a bridge
    otherwise takes its ports' lowest, which changes as machines come and go and leaves
    stale ARP entries for the gateway in the machines."""
    return [
        f"link add {bridge} address {mac} type bridge",
        f"addr add {cidr} dev {bridge}",
        f"link set {bridge} up",
    ]


def veth_commands(netns: str, veth: str, bridge: str) -> list[str]:
    """`ip -batch` lines (root namespace) making the netns and its link to the bridge."""
    return [
        f"netns add {netns}",
        f"link add {veth} type veth peer name eth0 netns {netns}",
        f"link set {veth} master {bridge}",
        f"link set {veth} up",
    ]


def configure_eth0(netns: str, interface: str, gateway: str) -> None:
    """Address the machine's end of the veth (`interface`: address/prefix), route via the
    bridge."""
    lines = [
        f"addr add {interface} dev eth0",
        "link set lo up",
        "link set eth0 up",
        f"route add default via {gateway}",
    ]
    ip("-n", netns, "-batch", "-", stdin="\n".join(lines) + "\n")


# -- sshd ----------------------------------------------------------------------------------


def sshd_config(
    comment: str,
    address: str,
    port: int,
    host_key: Path,
    authorized_keys: Path,
    pid_file: Path | None = None,
) -> str:
    """Public keys only, no PAM, no DNS, many sessions; `pid_file` None: none (as PID 1
    of its namespace its own pid would say nothing here)."""
    return (
        f"# {comment}\n"
        f"Port {port}\n"
        f"ListenAddress {address}\n"
        f"HostKey {host_key}\n"
        f"PidFile {pid_file or 'none'}\n"
        f"AuthorizedKeysFile {authorized_keys}\n"
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


def sshd_pid1_argv(
    netns: str, mounts: Sequence[tuple[str | Path, str | Path]], hostname: str, config: Path
) -> list[str]:
    """argv starting sshd (`-D -e`, logging to stderr) as PID 1 of new PID, mount and UTS
    namespaces in the netns, after bind mounting each (source, target) in order (a target
    folder is made when missing). The caller decides how it is detached and logged."""
    return [
        "ip", "netns", "exec", netns,
        "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc",
        "--propagation", "private",
        "sh", "-c", _PID1_SCRIPT.format(sshd=SSHD), "sh", hostname[:63], str(config),
        *(str(p) for mount in mounts for p in mount),
    ]  # fmt: skip


def listener_pid(netns: str, config: Path) -> int | None:
    """The host pid of the machine's sshd listener (PID 1 of its PID namespace)."""
    needle = str(config).encode()
    for pid in pids_in_netns(netns):
        stat = proc_stat(pid)
        if stat is None or stat[1] != "sshd":
            continue
        parent = proc_stat(stat[0])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and parent is not None and parent[1] == "unshare":
            return pid
    return None


def answers_ssh(address: str, port: int, within: float, attempt: float = 0.5) -> bool:
    """True once an SSH server answers with its banner on address:port; tries at least
    once, each try waiting up to `attempt` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            with socket.create_connection((address, port), timeout=attempt) as sock:
                sock.settimeout(attempt)
                if sock.recv(4).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def keygen(path: Path, comment: str) -> str:
    """A new ed25519 key pair without passphrase at `path`; returns "ssh-ed25519 AAAA…"."""
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
    return public_key(path.with_name(path.name + ".pub"))


def public_key(path: Path) -> str:
    """ "type key" of an OpenSSH public key file, without its comment."""
    return " ".join(path.read_text().split()[:2])


# -- processes -----------------------------------------------------------------------------


def kill_machine(netns: str, marker: str, timeout: float = 10.0) -> None:
    """SIGKILL every process of the machine: its sshd first (found by `marker`, a fragment
    of its command line, such as its run folder: a netns deleted by hand leaves it running,
    nameless), since as PID 1 its death kills everything started over SSH; then whatever
    else is in the netns or mentions `marker`."""
    listeners = [p for p in pids_with(marker) if comm(p) == "sshd"]
    if listeners:
        kill(listeners)
        grace = time.monotonic() + 1.0  # `unshare` exits by itself once sshd is gone
        while _leftovers(netns, marker) and time.monotonic() < grace:
            time.sleep(0.01)
    deadline = time.monotonic() + timeout
    while pids := _leftovers(netns, marker):
        kill(pids)
        if time.monotonic() > deadline:
            raise ProvisionError(
                f"namespace {netns}: processes {pids} survive SIGKILL; remove them by hand, "
                "then try again"
            )
        time.sleep(0.01)


def _leftovers(netns: str, marker: str) -> list[int]:
    return sorted(set(pids_in_netns(netns)) | set(pids_with(marker)))


def pids_with(fragment: str) -> list[int]:
    """Live processes (not zombies: their command line is empty) mentioning `fragment`."""
    needle = fragment.encode()
    found = []
    for pid in all_pids():
        if pid == os.getpid():
            continue
        try:
            if needle in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def pids_in_netns(netns: str) -> list[int]:
    """Live processes in the netns (a zombie has left its namespaces: not counted)."""
    try:
        ns = os.stat(f"/run/netns/{netns}")
    except OSError:
        return []
    found = []
    for pid in all_pids():
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (ns.st_dev, ns.st_ino):
            found.append(pid)
    return found


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, comm, starttime) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    # fields[0] is field 3 (state) of proc(5): ppid is field 4, starttime field 22
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), comm, int(fields[19])


def comm(pid: int) -> str | None:
    stat = proc_stat(pid)
    return stat[1] if stat else None


def kill(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def tail(path: Path, lines: int = 20) -> str:
    """The end of a log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"
