"""`reconciler gc [--keep N] [--delete-state]`: on every machine of the deployment, under
its lock, remove profiles older than the last N generations and the store paths no kept
profile of any deployment there references; then the same for the local store cache.
With `--delete-state`, also the persistent state of services no kept generation places
on a machine (and the snapshots)."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from dataclasses import dataclass
from typing import Any

from reconciler.errors import UserError
from reconciler.execute.agent_client import AgentError, call, ensure_agent, ship
from reconciler.execute.leases import Leases
from reconciler.models.schema import parse_duration
from reconciler.options import Options
from reconciler.state.db import StateDB, exclusive, open_db
from reconciler.state.hostkeys import RecordedHostKeys
from reconciler.state.machines import forget_removed_paths, forget_store_paths
from reconciler.state.recorded import RecordedState
from reconciler.state.rows import (
    generation_paths,
    newest_generations,
    pick_recorded,
    read_recorded,
    recorded_deployments,
    unsettled,
)
from reconciler.store.content import remove_tree
from reconciler.store.local import LocalStore
from reconciler.targets.base import Target, TargetError
from reconciler.targets.open import opened
from reconciler.text import human_bytes, plural


@dataclass
class MachineGc:
    machine: str
    answer: dict[str, Any]
    error: str | None = None


def run(opts: Options, keep: int, delete_state: bool, min_age: str) -> int:
    try:
        grace = parse_duration(min_age)
    except ValueError as e:
        raise UserError(f"--min-age {min_age}: {e}") from None
    if keep < 1:
        raise UserError(f"--keep {keep}: keep at least the current generation (--keep 1)")
    with exclusive(opts.state_path, "gc"):
        db = open_db(opts.state_location, write=True) if opts.state_exists else None
        if db is None:
            raise UserError(f"no state DB at {opts.state_label}: nothing was deployed from here")
        name = recorded_deployment(opts, db)
        if unsettled(db, name):
            raise UserError(
                f"an interrupted attempt of {name} is not settled yet: "
                "run `reconciler apply` first, then gc"
            )
        kept = newest_generations(db, name, keep)
        recorded = read_recorded(db, name)
        store = LocalStore(opts.state_root / "store")
        results = asyncio.run(_on_machines(opts, db, recorded, kept, delete_state, grace, store))
        removed: dict[str | None, list[str]] = {}
        for r in results:
            location = recorded.machines[r.machine].location
            removed.setdefault(location, []).extend(r.answer.get("removedPaths") or [])
        forget_removed_paths(db, removed)
        local_removed, local_freed, local_note = _local_store(db, name, kept, store)
    failed = [r for r in results if r.error]
    if opts.format == "json":
        print(
            json.dumps(
                {
                    "deployment": name,
                    "keptGenerations": sorted(kept),
                    "machines": {
                        r.machine: {**r.answer, "error": r.error}
                        for r in sorted(results, key=lambda r: r.machine)
                    },
                    "localStore": {"removedPaths": local_removed, "freedBytes": local_freed},
                },
                indent=2,
            )
        )
    else:
        gens = ", ".join(str(g) for g in sorted(kept)) or "none"
        print(f"Keeping generation{'s' * (len(kept) != 1)} {gens} of {name}.")
        for r in sorted(results, key=lambda r: r.machine):
            if r.error:
                print(f"  {r.machine}: {r.error}", file=sys.stderr)
                continue
            a = r.answer
            line = (
                f"  {r.machine}: removed {plural(len(a['removedPaths']), 'store path')}, "
                f"{plural(len(a['removedProfiles']), 'profile')}"
            )
            if delete_state:
                line += f", state of {plural(len(a['removedState']), 'service')}"
            print(f"{line} ({human_bytes(a['freedBytes'])} freed)")
            if a["keptYoung"]:
                print(
                    f"    kept {plural(a['keptYoung'], 'unreferenced path')} younger than "
                    f"--min-age {min_age}: an apply from elsewhere may be about to use them"
                )
            if a["unknownProfiles"]:
                print(
                    f"    kept every store path: {', '.join(a['unknownProfiles'])} predate "
                    "gc (they do not list their closure); apply once more, then gc again"
                )
        print(
            f"  local store cache: removed {plural(len(local_removed), 'path')} "
            f"({human_bytes(local_freed)} freed){local_note}"
        )
    return 1 if failed else 0


def recorded_deployment(opts: Options, db: StateDB) -> str:
    """The deployment named by -d, or the only one the state DB knows; it must be recorded."""
    name = pick_recorded(db, opts.deployment)
    names = recorded_deployments(db)
    if name is None:
        raise UserError("the state DB records no deployment: nothing to collect")
    if name not in names:
        raise UserError(
            f"-d {name}: the state DB records no such deployment "
            f"(it has: {', '.join(names) or 'none'})"
        )
    return name


async def _on_machines(
    opts: Options,
    db: StateDB,
    recorded: RecordedState,
    kept: list[int],
    delete_state: bool,
    grace: float,
    store: LocalStore,
) -> list[MachineGc]:
    agent = ensure_agent(store)
    connections = {m: have.connection for m, have in recorded.machines.items() if have.connection}
    async with opened(connections, opts.state_root, RecordedHostKeys(db)) as targets:

        async def on(machine: str, command: str, request: dict[str, Any]) -> dict[str, Any]:
            return await call(targets[machine], agent.path, command, request)

        leases = Leases(on, {m: t.state_dir for m, t in targets.items()}, f"gc-{uuid.uuid4()}")

        async def one(machine: str, target: Target) -> MachineGc:
            try:
                await ship([target], store, agent)
                await leases.take(machine)
            except (AgentError, TargetError) as e:
                return MachineGc(machine, {}, f"skipped: {e}")
            try:
                answer = await on(
                    machine,
                    "gc",
                    {
                        "stateDir": target.state_dir,
                        "owner": leases.owner,
                        "deployment": recorded.deployment,
                        "keep": kept,
                        "keepPaths": [agent.path],
                        "deleteState": delete_state,
                        "graceSeconds": grace,
                    },
                )
                return MachineGc(machine, answer)
            except (AgentError, TargetError) as e:
                return MachineGc(machine, {}, f"gc failed: {e}")

        try:
            async with leases.renewing():
                return await asyncio.gather(*(one(m, t) for m, t in targets.items()))
        finally:
            for problem in await leases.release_all():
                print(f"warning: {problem}", file=sys.stderr)


def _local_store(
    db: StateDB, name: str, kept: list[int], store: LocalStore
) -> tuple[list[str], int, str]:
    """Remove from the local cache what no kept generation of this deployment and no
    generation of another one needs; the agent is rebuilt on demand."""
    considered = [p for d, g, p in generation_paths(db) if d != name or g in kept]
    if any(p is None for p in considered):
        return [], 0, "; kept all: some generations predate gc"
    needed = {
        p for by_machine in considered for paths in (by_machine or {}).values() for p in paths
    }
    removed, freed = [], 0
    for meta in sorted((store.root / ".meta").glob("*.json")) if store.root.exists() else []:
        path = meta.name.removesuffix(".json")
        if path in needed or path.endswith("-reconciler-agent"):
            continue
        info = store.info(path)
        freed += info.size if info else 0
        meta.unlink()
        if store.dir(path).exists():
            remove_tree(store.dir(path))
        removed.append(path)
    forget_store_paths(db, removed)
    return removed, freed, ""
