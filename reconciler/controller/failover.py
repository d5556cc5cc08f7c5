"""Failover (SPEC §10): after each observation of a deployment with `failover: {after}`,
a machine unreachable for longer than `after` is recorded as failed and the same commit
is applied again — the instances placed by policy there go elsewhere, explicit ones are
reported lost, and the failed machine is not touched. When it answers again it is no
longer failed, and the next generation takes down what no longer belongs there; nothing
moves back by itself.

With `stateful: latest-snapshot`, each observation also keeps the latest snapshot of the
stateful instances placed by policy (execute/keep_snapshots.py), in the background: after
each new generation, else at most once per the deployment's interval, never while an
apply runs. The failover that follows restores them elsewhere from it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping
from datetime import UTC, datetime

from reconciler.controller.loop import DeploymentLoop
from reconciler.execute.keep_snapshots import age, due, forget_unwanted, keep_snapshots
from reconciler.execute.observe import Observation
from reconciler.options import Options
from reconciler.state.db import open_db
from reconciler.state.machines import note_reachability
from reconciler.state.rows import DeploymentRecord, machine_health
from reconciler.state.snapshots import KeptSnapshot, kept_snapshots, snapshots_wanted


def after_observation(opts: Options, d: DeploymentLoop, obs: Observation) -> list[str]:
    """Record what failover sees; returns what to say. Sets the loop's reason (and wakes
    it) when a machine failed or came back; else keeps the snapshots that are due."""
    if d.failover_after is None:
        return []
    seen = {name: m.reachable for name, m in obs.machines.items()}
    now = time.time()
    # a machine that stopped answering did so after it last answered, not when a connect
    # timeout ran out: that is when `after` starts
    last = d.last_answered
    gone_since = {m: last.get(m, now) for m, up in seen.items() if not up}
    last.update({m: now for m, up in seen.items() if up})
    db = open_db(opts.state_location, write=True)
    assert db is not None
    try:
        failed, recovered = note_reachability(
            db, d.name, seen, d.failover_after, gone_since=gone_since
        )
        health = machine_health(db, d.name)
        wanted, kept = snapshots_wanted(db, d.name), kept_snapshots(db, d.name)
    finally:
        db.close()
    said = _kept_problems(d)
    if failed:
        since = {m: health[m].unreachable_since for m in failed}
        d.reason = "failover: " + "; ".join(
            [
                ", ".join(f"{m} unreachable since {_iso(since[m])}" for m in sorted(failed)),
                *_restoring(kept, wanted, failed, now),
            ]
        )
        said.append(d.reason)
    elif recovered:
        d.reason = "recovered: " + ", ".join(f"{m} answers again" for m in sorted(recovered))
        said.append(d.reason)
    if d.reason:
        d.poke()
    elif (wanted or kept) and not d.applying and d.keeping is None:
        down = {m for m, h in health.items() if h.failed_since is not None}
        keys = due(obs.record, wanted, kept, {m for m, up in seen.items() if up}, d.interval, now)
        unwanted = any(k not in wanted and s.machine not in down for k, s in kept.items())
        if keys or unwanted:
            d.keeping = asyncio.get_running_loop().create_task(
                _keep(opts, obs.record, keys, kept, wanted, down)
            )
    return said


def _restoring(
    kept: Mapping[str, KeptSnapshot], wanted: Collection[str], failed: Collection[str], now: float
) -> list[str]:
    """What fails over from a kept snapshot, and how old that is (history shows it)."""
    return [
        f"{key} fails over from its snapshot of {_iso(snap.taken_at)} "
        f"({age(now - snap.taken_at)} old)"
        for key, snap in sorted(kept.items())
        if key in wanted and snap.machine in failed
    ]


async def _keep(
    opts: Options,
    record: DeploymentRecord,
    keys: list[str],
    kept: Mapping[str, KeptSnapshot],
    wanted: Collection[str],
    failed: Collection[str],
) -> list[str]:
    db = open_db(opts.state_location, write=True)
    assert db is not None
    try:
        problems = await keep_snapshots(db, record, keys, opts.state_root) if keys else []
        forget_unwanted(db, record.name, kept, wanted, failed)
        return problems
    finally:
        db.close()


def _kept_problems(d: DeploymentLoop) -> list[str]:
    """What went wrong keeping snapshots, once that is done (then it may run again)."""
    task = d.keeping
    if task is None or not task.done():
        return []
    d.keeping = None
    if task.cancelled():
        return []
    if (error := task.exception()) is not None:
        return [f"keeping snapshots failed: {type(error).__name__}: {error}"]
    return task.result()


def _iso(stamp: float | None) -> str:
    if stamp is None:
        return "?"
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
