"""Failover (SPEC §10): after each observation of a deployment with `failover: {after}`,
a machine unreachable for longer than `after` is recorded as failed and the same commit
is applied again — the instances placed by policy there go elsewhere, explicit ones are
reported lost, and the failed machine is not touched. When it answers again it is no
longer failed, and the next generation takes down what no longer belongs there; nothing
moves back by itself."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from reconciler.controller.loop import DeploymentLoop
from reconciler.execute.observe import Observation
from reconciler.options import Options
from reconciler.state.db import open_db
from reconciler.state.machines import note_reachability
from reconciler.state.rows import machine_health

_last_answered: dict[str, dict[str, float]] = {}  # deployment → machine → when, this process


def after_observation(opts: Options, d: DeploymentLoop, obs: Observation) -> list[str]:
    """Record what failover sees; returns what to say. Sets the loop's reason (and wakes
    it) when a machine failed or came back."""
    if d.failover_after is None:
        return []
    seen = {name: m.reachable for name, m in obs.machines.items()}
    now = time.time()
    # a machine that stopped answering did so after it last answered, not when a connect
    # timeout ran out: that is when `after` starts
    last = _last_answered.setdefault(d.name, {})
    gone_since = {m: last.get(m, now) for m, up in seen.items() if not up}
    last.update({m: now for m, up in seen.items() if up})
    db = open_db(opts.state_location, write=True)
    assert db is not None
    try:
        failed, recovered = note_reachability(
            db, d.name, seen, d.failover_after, gone_since=gone_since
        )
        health = machine_health(db, d.name)
    finally:
        db.close()
    said = []
    if failed:
        since = {m: health[m].unreachable_since for m in failed}
        d.reason = "failover: " + ", ".join(
            f"{m} unreachable since {_iso(since[m])}" for m in sorted(failed)
        )
        said.append(d.reason)
    elif recovered:
        d.reason = "recovered: " + ", ".join(f"{m} answers again" for m in sorted(recovered))
        said.append(d.reason)
    if d.reason:
        d.poke()
    return said


def _iso(stamp: float | None) -> str:
    if stamp is None:
        return "?"
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
