"""Health checks (http, tcp, command), and that an answer on the instance's port comes
from the instance itself: a check answered by another process that already held the port
is no proof that the instance runs."""

from __future__ import annotations

import os
import socket
import sys

from .processes import group_members, run_captured
from .request import Health

WILDCARDS = ("0.0.0.0", "::")
LISTEN = "0A"  # the TCP state in /proc/net/tcp


def probe(
    health: Health, host: str, port: int | None, env: dict[str, str], cwd: str, timeout: float
) -> tuple[bool, str]:
    """One round of every configured check; (passed, why not)."""
    timeout = max(timeout, 0.05)
    if health.http is not None and port is not None:
        import http.client

        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", health.http, headers={"Connection": "close"})
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException) as e:
            return False, f"GET http://{host}:{port}{health.http}: {e}"
        finally:
            conn.close()
        if not 200 <= status < 400:
            return False, f"GET http://{host}:{port}{health.http}: HTTP {status}"
    if health.tcp and port is not None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e:
            return False, f"connect {host}:{port}: {e}"
    if health.command is not None:
        try:
            code, output = run_captured(["sh", "-c", health.command], env, cwd, timeout)
        except OSError as e:
            return False, f"health command {health.command!r}: {e}"
        if code != 0:
            last = output.strip().splitlines()[-1:] or [""]
            why = "timed out" if code is None else f"exit status {code}"
            return False, f"health command {health.command!r}: {why} {last[0]}".rstrip()
    return True, ""


def check(
    health: Health,
    host: str,
    port: int | None,
    env: dict[str, str],
    cwd: str,
    timeout: float,
    pgid: int,
) -> tuple[bool, str]:
    """`probe`, and for an http or tcp check: the port is held by process group `pgid`
    (/proc/<pid>/net/tcp{,6} gives the listening sockets' inodes, /proc/<pid>/fd the
    sockets each process holds)."""
    ok, why = probe(health, host, port, env, cwd, timeout)
    if not ok or port is None or not health.needs_port():
        return ok, why
    inodes = listening_inodes(pgid, host, port)
    if listens(pgid, inodes):
        return True, ""
    holder = next((pid for pid in all_pids() if holds(pid, inodes)), None)
    named = f" (pid {holder})" if holder is not None else ""
    return False, f"{host}:{port} answers, but another process{named} holds that port"


def listens(pgid: int, inodes: set[str]) -> bool:
    """A process of group `pgid` holds one of the sockets `inodes`: the leader first, it
    is usually the one."""
    if not inodes:
        return False
    return holds(pgid, inodes) or any(
        holds(pid, inodes) for pid in group_members(pgid) if pid != pgid
    )


def all_pids() -> list[int]:
    try:
        return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return []


def listening_inodes(pid: int, host: str, port: int) -> set[str]:
    """Inodes of the TCP sockets listening on `port` at host's addresses or a wildcard, in
    the network namespace of `pid`."""
    wanted = addresses(host, port)
    found: set[str] = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()  # sl local remote st … uid timeout inode
            if len(fields) < 10 or fields[3] != LISTEN:
                continue
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) != port:
                continue
            ip = parse_address(address, family)
            if wanted is None or ip in WILDCARDS or ip in wanted:
                found.add(fields[9])
    return found


def addresses(host: str, port: int) -> set[str] | None:
    """The addresses `host` stands for; None (any address) if it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return None
    return {str(info[4][0]) for info in infos}


def parse_address(text: str, family: int) -> str:
    """An address as /proc/net/tcp writes it: 32-bit words in the host's byte order."""
    raw = bytes.fromhex(text)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = socket.inet_ntop(family, raw)
    mapped = "::ffff:"
    return ip[len(mapped) :] if ip.startswith(mapped) and "." in ip else ip


def holds(pid: int, inodes: set[str]) -> bool:
    folder = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(folder)
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(os.path.join(folder, fd))
        except OSError:
            continue
        if link.startswith("socket:[") and link[len("socket:[") : -1] in inodes:
            return True
    return False
