"""Allocated values (SPEC §2.3): local and container addresses, `port: auto`.

Recorded values are kept; new ones go, in sorted name order, to the lowest free value.
Pure: recorded allocations in, allocations out. Keys:
  local-address/<deployment>/<machine>     (one host: unique across all deployments)
  container-subnet                          (the private /16 of container machines)
  container-address/<deployment>/<machine>
  port/<deployment>/<service>@<machine>
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping

LOCAL_FIRST = ipaddress.IPv4Address("127.0.0.10")
LOCAL_NET = ipaddress.IPv4Network("127.0.0.0/8")
DEFAULT_CONTAINER_SUBNET = "10.213.0.0/16"


class AllocationError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def needs_local_address(
    deployment: str, machines: Iterable[str], recorded: Mapping[str, str]
) -> bool:
    """Whether one of these local machines has no address yet: only then does what the
    rest of the host uses matter (reading that costs a registry file per address)."""
    return any(f"local-address/{deployment}/{name}" not in recorded for name in machines)


def allocate_local_addresses(
    deployment: str,
    machines: Iterable[str],
    recorded: Mapping[str, str],
    host_taken: Collection[str] = (),
) -> dict[str, str]:
    """Addresses for the given local machines; `recorded` holds every deployment's of this
    state, `host_taken` what the rest of the host uses (desired/host_addresses.py)."""
    taken = {v for k, v in recorded.items() if k.startswith("local-address/")} | set(host_taken)
    out: dict[str, str] = {}
    pending = []
    for name in sorted(machines):
        key = f"local-address/{deployment}/{name}"
        if key in recorded:
            out[key] = recorded[key]
        else:
            pending.append(key)
    candidate = LOCAL_FIRST
    for key in pending:
        while str(candidate) in taken:
            candidate += 1
        if candidate not in LOCAL_NET or candidate == LOCAL_NET.broadcast_address:
            raise ValueError("no free local address left in 127.0.0.0/8")
        out[key] = str(candidate)
        taken.add(str(candidate))
    return out


def allocate_container_addresses(
    deployment: str, machines: Iterable[str], recorded: Mapping[str, str]
) -> dict[str, str]:
    subnet = ipaddress.IPv4Network(recorded.get("container-subnet", DEFAULT_CONTAINER_SUBNET))
    out = {"container-subnet": str(subnet)}
    taken = {v for k, v in recorded.items() if k.startswith("container-address/")}
    hosts = subnet.hosts()
    next(hosts)  # the first address is the bridge's
    for name in sorted(machines):
        key = f"container-address/{deployment}/{name}"
        if key in recorded:
            out[key] = recorded[key]
            continue
        for candidate in hosts:
            if str(candidate) not in taken:
                out[key] = str(candidate)
                taken.add(str(candidate))
                break
        else:
            raise ValueError(f"no free container address left in {subnet}")
    return out


def allocate_ports(
    deployment: str,
    wanted: Mapping[str, tuple[str, int | str | None, tuple[int, int] | None]],
    recorded: Mapping[str, str],
) -> dict[str, int]:
    """Ports for instances: `wanted` maps instance key → (machine, port, portRange).

    Explicit ports are fixed; recorded auto ports are kept when still free and in range;
    the rest get, in sorted key order, the lowest free port of their range.
    """
    used: dict[str, set[int]] = {}
    out: dict[str, int] = {}
    for key, (machine, port, _) in wanted.items():
        if isinstance(port, int):
            out[key] = port
            used.setdefault(machine, set()).add(port)
    autos = sorted(k for k, (_, port, _) in wanted.items() if port == "auto")
    pending = []
    for key in autos:
        machine, _, prange = wanted[key]
        value = recorded.get(f"port/{deployment}/{key}")
        lo, hi = prange or (8000, 8999)
        taken = used.setdefault(machine, set())
        if value is not None and lo <= int(value) <= hi and int(value) not in taken:
            out[key] = int(value)
            taken.add(int(value))
        else:
            pending.append(key)
    for key in pending:
        machine, _, prange = wanted[key]
        lo, hi = prange or (8000, 8999)
        taken = used[machine]
        port = next((p for p in range(lo, hi + 1) if p not in taken), None)
        if port is None:
            raise AllocationError(key, f"no free port left in {lo}-{hi} on {machine} for {key}")
        out[key] = port
        taken.add(port)
    return out
