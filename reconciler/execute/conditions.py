"""The conditions of a deployment, Kubernetes style — Ready, Reconciling, Stalled — as
they follow from its record, what was observed on its machines, and what the
controller knows of its own (a commit it refused, an apply in flight). Computed here
and nowhere else. Pure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reconciler.execute.outcome import ConditionType, Reason
from reconciler.state.rows import AttemptRow, DeploymentRecord

if TYPE_CHECKING:
    from reconciler.execute.observe import Observation


def conditions(
    obs: Observation | None,
    record: DeploymentRecord | None,
    stalled: tuple[Reason, str] | None = None,
    applying: str | None = None,
) -> list[dict[str, Any]]:
    """Ready, Reconciling and Stalled as they follow from the record and what was seen;
    `stalled` is the controller's own (a refused commit, bad models, a failing apply it
    backs off from) and `applying` the commit it is applying now. Transition times are
    added when the conditions are stored."""
    last = record.last_attempt if record else None
    generation = record.generation if record else None
    rollback_failed = last is not None and last.status == "stalled"
    running = last is not None and last.status == "running"
    ready, reason, message = _ready(obs, last, generation)
    reconciling = (
        (True, Reason.APPLYING, f"applying {applying}")
        if applying
        else (
            running,
            Reason.ATTEMPT_IN_FLIGHT if running else Reason.IDLE,
            f"attempt {last.id} started {last.started_at}" if running and last else "",
        )
    )
    stuck = (
        (True, *stalled)
        if stalled
        else (
            rollback_failed,
            Reason.ROLLBACK_FAILED if rollback_failed else Reason.NOT_STALLED,
            first_line(last.reason) if rollback_failed and last else "",
        )
    )
    return [
        _condition(ConditionType.READY, ready, reason, message),
        _condition(ConditionType.RECONCILING, *reconciling),
        _condition(ConditionType.STALLED, *stuck),
    ]


def _ready(
    obs: Observation | None, last: AttemptRow | None, generation: AttemptRow | None
) -> tuple[bool, Reason, str]:
    if generation is None or last is None:
        return False, Reason.NEVER_APPLIED, "no generation has been applied"
    if last.status != "succeeded":
        reasons = {"stalled": Reason.STALLED, "running": Reason.ATTEMPT_IN_FLIGHT}
        what = f"the last attempt ({(last.commit or '')[:12] or 'no commit'}) {last.status}"
        detail = f": {first_line(last.reason)}" if last.reason else ""
        return False, reasons.get(last.status, Reason.ATTEMPT_FAILED), what + detail
    if obs is None:
        return False, Reason.NOT_OBSERVED, "the machines were not observed"
    unreachable = sorted(n for n, m in obs.machines.items() if not m.reachable)
    if unreachable:
        return False, Reason.MACHINES_UNREACHABLE, f"unreachable: {', '.join(unreachable)}"
    down = [f"{i.row.key} {i.state}" for i in obs.instances if i.state != "active"]
    if down:
        return False, Reason.INSTANCES_NOT_ACTIVE, ", ".join(down)
    sick = [i.row.key for i in obs.instances if i.healthy is False]
    if sick:
        return False, Reason.INSTANCES_UNHEALTHY, f"failing health checks: {', '.join(sick)}"
    n = len(obs.instances)
    return True, Reason.ALL_ACTIVE, f"generation {generation.generation}: {n} instances active"


def with_stored(
    computed: list[dict[str, Any]], stored: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """What a controller stored overlaid (for `status` beside a controller): a Stalled it
    set counts, and the transition times it kept."""
    by_type = {c.get("type"): c for c in stored}
    out = []
    for c in computed:
        kept = by_type.get(c["type"])
        if kept and c["type"] == ConditionType.STALLED and kept.get("status") == "True":
            c = {**c, **{k: kept[k] for k in ("status", "reason", "message") if k in kept}}
        if kept and kept.get("status") == c["status"]:
            c = {**c, "lastTransitionTime": kept.get("lastTransitionTime")}
        out.append(c)
    return out


def first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0]


def _condition(kind: ConditionType, status: bool, reason: Reason, message: str) -> dict[str, Any]:
    return {
        "type": str(kind),
        "status": "True" if status else "False",
        "reason": str(reason),
        "message": message,
    }
