"""Kept snapshots (SPEC §10 `failover: {stateful: latest-snapshot}`): the controller takes
the latest snapshot of each stateful instance placed by policy — the agent's own
`snapshot` request, as a move between live machines takes it — and keeps a copy on its
side, `<state root>/snapshots/<deployment>/<instance>/`, so that the state outlives its
machine: when the machine fails, the instance is placed elsewhere and restored from that
copy (execute/transition.py). One copy per instance, the newest; the state records only
where it is, when it was taken, its size and hash."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import shlex
import time
from collections.abc import Collection, Mapping
from pathlib import Path

from reconciler.execute.agent_client import AgentError, call, ensure_agent, fetch_snapshot, ship
from reconciler.state.db import StateDB
from reconciler.state.hostkeys import RecordedHostKeys
from reconciler.state.rows import DeploymentRecord, InstanceRow
from reconciler.state.snapshots import KeptSnapshot, forget_snapshot, keep_snapshot
from reconciler.store.local import LocalStore
from reconciler.targets.base import Target, TargetError
from reconciler.targets.open import opened


def snapshot_folder(state_root: Path, deployment: str, instance: str) -> Path:
    return state_root / "snapshots" / deployment / instance


def due(
    record: DeploymentRecord,
    wanted: Collection[str],
    kept: Mapping[str, KeptSnapshot],
    reachable: Collection[str],
    every: float,
    now: float,
) -> list[str]:
    """The wanted instances to snapshot now: on a machine that answers, and kept never,
    before the last generation (an attempt may have migrated it), or `every` seconds ago."""
    generation = record.generation.generation if record.generation else None
    rows = {i.key: i for i in record.instances}
    return [
        key
        for key in sorted(wanted)
        if key in rows
        and rows[key].machine in reachable
        and (
            (snap := kept.get(key)) is None
            or snap.generation != generation
            or now - snap.taken_at >= every
        )
    ]


async def keep_snapshots(
    db: StateDB, record: DeploymentRecord, keys: Collection[str], state_root: Path
) -> list[str]:
    """Take and keep the snapshots of the instances `keys`; returns what went wrong."""
    rows = {i.key: i for i in record.instances if i.key in keys}
    machines = {m.name: m.connection for m in record.machines if m.connection}
    connections = {i.machine: machines[i.machine] for i in rows.values() if i.machine in machines}
    generation = record.generation.generation if record.generation else None
    store = LocalStore(state_root / "store")
    agent = ensure_agent(store)
    problems: list[str] = []
    async with opened(connections, state_root, RecordedHostKeys(db)) as targets:

        async def on(machine: str) -> None:
            try:
                await ship([targets[machine]], store, agent)
            except (AgentError, TargetError) as e:
                problems.append(f"{machine}: no snapshot kept: {e}")
                return
            for inst in sorted(rows.values(), key=lambda i: i.key):
                if inst.machine != machine:
                    continue
                try:
                    taken = await _take(targets[machine], agent.path, record.name, inst, state_root)
                except (AgentError, TargetError, OSError) as e:
                    problems.append(f"{inst.key}: no snapshot kept: {e}")
                    continue
                snap = KeptSnapshot(inst.key, machine, generation, *taken)
                old = _kept_files(Path(snap.path).parent)
                keep_snapshot(db, record.name, snap)
                for path in old - {Path(snap.path)}:
                    path.unlink(missing_ok=True)

        await asyncio.gather(*(on(m) for m in sorted(targets)))
    return problems


def forget_unwanted(
    db: StateDB,
    deployment: str,
    kept: Mapping[str, KeptSnapshot],
    wanted: Collection[str],
    failed: Collection[str],
) -> None:
    """Kept snapshots no instance needs any more: not wanted, and not of a failed machine
    (what moved away from one may still be restored from it, until it answers again)."""
    for key, snap in kept.items():
        if key not in wanted and snap.machine not in failed:
            forget_snapshot(db, deployment, key)
            for path in _kept_files(Path(snap.path).parent):
                path.unlink(missing_ok=True)


async def _take(
    target: Target, agent: str, deployment: str, inst: InstanceRow, state_root: Path
) -> tuple[float, str, int, str]:
    """Snapshot one instance on its machine and copy it here: (taken_at, path, size,
    sha256). The machine's own copy is removed once it is here."""
    instance = None
    if inst.type != "sqlite-database":  # a wrapper snapshots itself, a process its folder
        if inst.request is None:
            raise AgentError(target.machine, "no recorded activation request to snapshot with")
        instance = inst.request["instance"]
    taken_at = time.time()
    ask = functools.partial(call, target, agent)
    there, data = await fetch_snapshot(ask, target, deployment, inst.service, instance)
    await target.run(f"rm -f {shlex.quote(there)}")
    folder = snapshot_folder(state_root, deployment, inst.key)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / os.path.basename(there)
    _write_private(path, data)
    return taken_at, str(path.resolve()), len(data), hashlib.sha256(data).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    """Owner-only (it may hold secrets), under a temporary name renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _kept_files(folder: Path) -> set[Path]:
    return {p.resolve() for p in folder.iterdir()} if folder.is_dir() else set()


def read_kept(machine: str, snap: KeptSnapshot) -> bytes:
    """The kept copy, as it was kept (else an AgentError naming `machine`, where it was
    to be restored)."""
    try:
        data = Path(snap.path).read_bytes()
    except OSError as e:
        raise AgentError(
            machine,
            f"the kept snapshot of {snap.instance} cannot be read: {e.strerror}: {snap.path}",
        ) from None
    if len(data) != snap.size or hashlib.sha256(data).hexdigest() != snap.sha256:
        raise AgentError(
            machine, f"the kept snapshot of {snap.instance} changed since it was kept: {snap.path}"
        )
    return data


def age(seconds: float) -> str:
    """A snapshot's age in words: 42 s, 7 min, 3 h, 2 d."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{int(seconds // size)} {unit}"
    return f"{max(0, int(seconds))} s"
