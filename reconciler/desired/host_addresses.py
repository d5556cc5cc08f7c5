"""Local addresses are host-wide (SPEC §12): the I/O half of handing them out.

Two state DBs on one host (a demo beside the tests) must never give machines the same
loopback address. Before compiling, a command asks `taken_on_host` what the rest of the
host uses — addresses another state claimed in the host-wide registry, and loopback
addresses a socket of any process listens on — and compile skips them for new machines
(compile itself stays pure). Once an apply has reserved its allocations, `claim` writes
them into the registry, one file per address created exclusively, so the next state on
the host skips them even while nothing listens there.

The registry is `$RECONCILER_HOST_REGISTRY`, else `/run/reconciler` (root), else
`$XDG_RUNTIME_DIR/reconciler`, else `~/.local/state/reconciler`. A claim whose state DB
no longer exists is stale: it blocks nothing, and the next `taken_on_host` that sees it
deletes it (so that reading the registry stays as long as the live claims). Claiming and
sweeping take turns on the registry's lock file: a claim being replaced is never swept.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

LOCAL = "local-address/"
_LISTEN = "0A"  # TCP state in /proc/net/tcp


def registry_dir() -> Path:
    given = os.environ.get("RECONCILER_HOST_REGISTRY")
    if given:
        return Path(given)
    if os.access("/run", os.W_OK):
        return Path("/run/reconciler")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "reconciler"
    return Path.home() / ".local" / "state" / "reconciler"


def taken_on_host(state: Path, registry: Path | None = None) -> frozenset[str]:
    """Loopback addresses the rest of the host uses: not to be handed out by `state`."""
    folder = (registry or registry_dir()) / "local-addresses"
    claims = _claims(folder)
    mine = _owner(state)
    live = {owner: Path(owner).exists() for owner, _ in claims.values() if owner != mine}
    claimed = {a for a, (owner, _) in claims.items() if live.get(owner)}
    ours = {a for a, (owner, _) in claims.items() if owner == mine}
    if stale := [a for a, (owner, _) in claims.items() if live.get(owner) is False]:
        _sweep(folder, stale)
    return frozenset(claimed | (listening_on_loopback() - ours))


def claim(
    state: Path,
    deployment: str,
    allocations: Mapping[str, str],
    registry: Path | None = None,
    *,
    held: Mapping[str, str],
) -> list[str]:
    """Record the deployment's local addresses as this state's, and give back those of
    `held` (its recorded allocations) it no longer has: files of its own addresses only,
    never a scan of every claim on the host. Returns the keys whose address another live
    state holds (a concurrent apply elsewhere got there first: compile again)."""
    folder = (registry or registry_dir()) / "local-addresses"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return []  # no registry here: the listening check still applies
    mine = _owner(state)
    prefix = f"{LOCAL}{deployment}/"
    wanted = {v: k for k, v in allocations.items() if k.startswith(prefix)}
    with _turn(folder, wait=True):
        clashes = [
            key for address, key in sorted(wanted.items()) if not _take(folder / address, mine, key)
        ]
        for key, address in held.items():
            if (
                key.startswith(prefix)
                and address not in wanted
                and _claim_of(folder / address) == (mine, key)
            ):
                with contextlib.suppress(FileNotFoundError):
                    (folder / address).unlink()
    return clashes


def listening_on_loopback() -> set[str]:
    """127.0.0.0/8 addresses (but 127.0.0.1) a TCP socket listens on or a UDP socket is
    bound to, by any process on the host."""
    found = set()
    for table, listening_only in (("tcp", True), ("udp", False)):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or (listening_only and fields[3] != _LISTEN):
                continue
            address = _address(fields[1].split(":")[0])
            if address and address != "127.0.0.1":
                found.add(address)
    return found


def _address(hex_value: str) -> str | None:
    """/proc/net's address: the kernel's 32-bit value in host byte order."""
    try:
        packed = struct.pack("=I", int(hex_value, 16))
    except (ValueError, struct.error):
        return None
    address = socket.inet_ntoa(packed)
    return address if ipaddress.IPv4Address(address).is_loopback else None


def _owner(state: Path) -> str:
    return str(Path(state).resolve())


@contextlib.contextmanager
def _turn(folder: Path, wait: bool) -> Iterator[bool]:
    """The registry's lock, released even on kill -9; yields False when `wait` is off and
    another process holds it (or there is no lock to take)."""
    try:
        fd = os.open(folder / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:
        yield wait  # a registry we cannot write: nothing to sweep, claims as before
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _sweep(folder: Path, addresses: Iterable[str]) -> None:
    """Delete these claims if their state DB is still gone, unless someone is claiming
    (they would be replaced then anyway: a later reader sweeps what is left)."""
    with _turn(folder, wait=False) as ours:
        if not ours:
            return
        for address in addresses:
            found = _claim_of(folder / address)
            if found is not None and not Path(found[0]).exists():
                with contextlib.suppress(OSError):
                    (folder / address).unlink()


def _claims(folder: Path) -> dict[str, tuple[str, str]]:
    """address → (the state DB that claimed it, its allocation key)."""
    out = {}
    with contextlib.suppress(OSError):
        for path in folder.iterdir():
            if not path.name.startswith(".") and (found := _claim_of(path)) is not None:
                out[path.name] = found  # (a dot: a claim being written)
    return out


def _claim_of(path: Path) -> tuple[str, str] | None:
    """(state, key) of one address's claim; None when there is none, or it is half-written
    by a claim this instant, or not ours."""
    try:
        entry = json.loads(path.read_text())
        return str(entry["state"]), str(entry["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _take(path: Path, owner: str, key: str) -> bool:
    """Claim one address file for `owner`; False when another live state holds it. The file
    appears whole or not at all (written aside, then linked: linking fails if it exists)."""
    if _claim_of(path) == (owner, key):
        return True  # ours already: the usual case, an apply of a deployment that has it
    spare = path.with_name(f".{path.name}.{os.getpid()}")
    spare.write_text(json.dumps({"state": owner, "key": key}))
    try:
        os.link(spare, path)
    except FileExistsError:
        holder = (_claim_of(path) or ("", ""))[0]  # not a claim: replace it
        if holder != owner and holder and Path(holder).exists():
            spare.unlink()
            return False
        os.replace(spare, path)  # stale, or ours already
        return True
    spare.unlink()
    return True
