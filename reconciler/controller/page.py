"""The status page: HTML rendered from the same JSON dicts the API serves, so what a
person sees and what a script reads never disagree, and tests need no controller.

Jinja2 templates (`templates/`) with autoescape: subjects, authors, messages and names
come from commits and machines. Each deployment is drawn as a picture (inline SVG laid
out by `picture.py`: machines as boxes, instances inside by dependency depth, coloured
by state and health), then its tables. No scripts, no external assets (the HTTP side
forbids both with a Content-Security-Policy); the page reloads itself every few seconds.
Missing keys render as "–", so a deployment the controller knows little about yet still
shows.

What the page reads of a deployment document (`status --format json` plus the
controller's object); the fields marked *optional* are drawn when present:

- `deployment`, `recorded`, `conditions[]` (`type`, `status`, `reason`, `message`,
  `lastTransitionTime`), `lastAppliedRevision`, `lastAttemptedRevision`;
  `generation` (`number`, `subject`, `author`, `appliedAt`);
  `lastAttempt` (`id`, `status`, `reason`, `commit`, `subject`, `finishedAt`, `changes`).
- `machines[]`: `name`, `targetEnv`, `address`, `reachable`, `error`, `generation`,
  `commit`; *optional* `failed` (bool) and `failedSince` (ISO time) of SPEC §10.
- `instances[]`: `key`, `service`, `machine`, `type`, `port`, `state`, `healthy`,
  `pid`; *optional* `dependsOn` (the service names it depends on: the picture's
  columns and arrows; without them the instances stand in a grid) and `rollout`
  (`{"batch": i, "batches": n, "phase": "waiting" | "replacing" | "ready"}`, SPEC §9).
- `controller`: `autoApply`, `selfHeal`, `paused`, `nextPollIn`, `backoffUntil`,
  `lastError`, `trackedBranch`, `head`; *optional* `lastPlan`: the plan text
  (`reconciler plan`) of the commit that last failed or was refused. Without it a
  failed commit shows its reason and its attempt's summary (the history row's
  `summary`), and says that the plan was not recorded.

A history row (`history --format json`) gives `generation`, `time`, `commit`,
`author`, `subject`, `result`, `changes`, `reason`, `attempt` and `summary`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader

from reconciler.controller.picture import NODE_H, NODE_W, Node, Picture, draw, log_url

REFRESH_SECONDS = 5
RECENT_ATTEMPTS = 5  # history rows per deployment on the overview; the detail page shows all
CLIP = 120  # characters of a message shown in a table cell (all of it in the tooltip)
# Of a failure's reason on the overview (the detail page shows all of it):
CLIP_LINES, CLIP_CHARS = 4, 360
SHORT_SHA = 12
_SHA = re.compile(r"[0-9a-f]{7,64}")  # only such values become links

# A colour class per value: good (green), bad (red), warn (amber), busy (blue), muted.
_STATE_CLASS = {"active": "good", "drifted": "warn", "unknown": "muted"}  # else bad
_RESULT_CLASS = {
    "succeeded": "good",
    "applied": "good",
    "running": "busy",
    "not_applied": "muted",
}  # else bad: a last attempt with such a result is a commit that failed
_REFUSALS = {"UntrustedCommit": "refused", "NotADescendant": "refused", "InvalidModels": "invalid"}
_VERBS = {
    "rolled_back": "was rolled back",
    "refused": "was refused",
    "invalid": "has invalid models",
    "stalled": "stalled: its rollback failed",
}
_TROUBLE = {"failing": "fails its health check"}
# A plan summary's counts in words, in the order a person reads them.
_SUMMARY = (
    ("machinesToCreate", "create {} machine{s}"),
    ("machinesToReplace", "replace {} machine{s}"),
    ("machinesToDestroy", "destroy {} machine{s}"),
    ("toActivate", "start {} instance{s}"),
    ("toReplace", "replace {} instance{s}"),
    ("toDeactivate", "stop {} instance{s}"),
    ("stateMoves", "move the state of {} service{s}"),
    ("pathsToTransfer", "transfer {} store path{s}"),
    ("unchanged", "leave {} unchanged"),
)
# What each tone of the picture means, for the legend (only tones drawn are listed).
_LEGEND = (
    ("good", "healthy / active"),
    ("busy", "being replaced"),
    ("wait", "waiting for its batch"),
    ("warn", "drifted"),
    ("bad", "dead or failing"),
    ("muted", "unknown"),
)


@dataclass(frozen=True)
class Pill:
    tone: str
    text: str
    reason: str | None = None


@dataclass(frozen=True)
class Problem:
    """The commit that failed or was refused, and what it would have done."""

    commit: str | None
    subject: str | None
    result: str  # rolled_back, failed, refused, invalid, …
    cause: str | None  # the Stalled reason: ApplyFailed, UntrustedCommit, …
    when: str | None
    message: str | None
    plan: str | None
    summary: str | None  # the plan's counts in words, when the plan itself is missing
    changes: str | None

    @property
    def verb(self) -> str:
        return _VERBS.get(self.result, self.result.replace("_", " "))


@dataclass(frozen=True)
class Alert:
    """One line of what needs a look, beside the picture."""

    tone: str
    text: str
    since: str | None = None  # a time the page shows absolute and relative
    more: str | None = None  # a second, quieter line


@dataclass(frozen=True)
class Card:
    """One deployment as the templates show it."""

    doc: dict[str, Any]
    name: str
    index: int  # keeps the SVG ids of several pictures on one page apart
    headline: Pill
    picture: Picture | None
    problem: Problem | None
    alerts: list[Alert]
    legend: list[tuple[str, str]]
    history: list[dict[str, Any]]
    full: bool

    @property
    def all_well(self) -> bool:
        nodes = self.picture.nodes if self.picture else []
        return bool(nodes) and all(n.tone == "good" for n in nodes) and not self.problem

    @property
    def anchor(self) -> str:
        return f"d-{self.name}"

    @property
    def href(self) -> str:
        return f"/deployments/{quote(self.name, safe='')}"

    @property
    def api(self) -> str:
        return f"/api/deployments/{quote(self.name, safe='')}"


def overview(
    deployments: list[dict[str, Any]],
    histories: Mapping[str, list[dict[str, Any]]],
    *,
    ready: tuple[bool, str],
    commit_url: str | None,
    now: datetime,
) -> str:
    """Every deployment: a summary table, then a section each with its picture and its
    recent attempts."""
    is_ready, why = ready
    cards = [
        _card(d, histories.get(_name(d), []), n, full=False) for n, d in enumerate(deployments)
    ]
    ready_count = sum(1 for d in deployments if _is_ready(d))
    return _render(
        "overview.html",
        now,
        commit_url,
        heading=f"{ready_count}/{len(deployments)} ready",
        not_ready=None if is_ready else why,
        cards=cards,
    )


def detail(
    deployment: dict[str, Any],
    history: list[dict[str, Any]],
    *,
    commit_url: str | None,
    now: datetime,
) -> str:
    """One deployment with whole messages and its whole history."""
    card = _card(deployment, history, 0, full=True)
    return _render("detail.html", now, commit_url, heading=card.name, card=card)


def not_found(what: str, now: datetime) -> str:
    return _render("not_found.html", now, None, heading="not found", what=what)


# --- rendering ------------------------------------------------------------------------


@cache
def _templates() -> Environment:
    env = Environment(
        loader=PackageLoader("reconciler.controller", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.globals.update(
        moment=_moment,
        span=_span,
        clip=_clip,
        head_lines=_head_lines,
        commit_href=_commit_href,
        headline=_headline,
        condition_class=_condition_class,
        state_class=lambda state: _STATE_CLASS.get(str(state), "bad"),
        result_class=lambda result: _RESULT_CLASS.get(str(result), "bad"),
        as_dict=_dict,
        as_dicts=_dicts,
        is_number=lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        dash=lambda v: "–" if v is None else v,
        log_url=log_url,
        utc_text=lambda now: f"{now.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
        REFRESH_SECONDS=REFRESH_SECONDS,
        SHORT_SHA=SHORT_SHA,
        NODE_W=NODE_W,
        NODE_H=NODE_H,
    )
    return env


def _render(template: str, now: datetime, commit_url: str | None, **values: Any) -> str:
    return _templates().get_template(template).render(now=now, commit_url=commit_url, **values)


def _card(d: dict[str, Any], history: list[dict[str, Any]], index: int, full: bool) -> Card:
    picture = draw(d)
    tones = {n.tone for n in picture.nodes} if picture else set()
    return Card(
        doc=d,
        name=_name(d),
        index=index,
        headline=_headline(d),
        picture=picture,
        problem=_problem(d, history),
        alerts=_alerts(d, picture),
        legend=[(tone, words) for tone, words in _LEGEND if tone in tones],
        history=history if full else history[:RECENT_ATTEMPTS],
        full=full,
    )


def _problem(d: dict[str, Any], history: list[dict[str, Any]]) -> Problem | None:
    """The last attempt when it failed, or the head the controller refused (a refusal or
    bad models never reach an attempt); None when nothing failed."""
    controller, attempt = _dict(d.get("controller")), _dict(d.get("lastAttempt"))
    error, head = controller.get("lastError"), controller.get("head")
    failed = bool(attempt) and _RESULT_CLASS.get(str(attempt.get("status"))) is None
    if not error and not failed:
        return None
    stalled = _condition(d, "Stalled")
    cause = stalled.get("reason") if stalled.get("status") == "True" else None
    plan = controller.get("lastPlan")
    if failed and (not error or not head or attempt.get("commit") == head):
        row = next((r for r in history if r.get("attempt") == attempt.get("id")), {})
        return Problem(
            commit=_str(attempt.get("commit")),
            subject=_str(attempt.get("subject")),
            result=str(attempt.get("status")),
            cause=_str(cause),
            when=_str(attempt.get("finishedAt")),
            message=_str(attempt.get("reason") or error),
            plan=_str(plan),
            summary=_summary_words(_dict(row.get("summary"))),
            changes=_str(attempt.get("changes")),
        )
    return Problem(
        commit=_str(head),
        subject=None,
        result=_REFUSALS.get(str(cause), "failed"),
        cause=_str(cause),
        when=_str(stalled.get("lastTransitionTime")),
        message=_str(error),
        plan=_str(plan),
        summary=None,
        changes=None,
    )


def _alerts(d: dict[str, Any], picture: Picture | None) -> list[Alert]:
    """What needs a look, in one line each: failed machines, instances in trouble, and
    rollouts under way."""
    alerts = [
        Alert(
            "warn",
            f"Machine {m.get('name')} is unreachable",
            more=_clip(m["error"]) if m.get("error") else None,
        )
        for m in _dicts(d.get("machines"))
        if m.get("reachable") is False and not (m.get("failed") or m.get("failedSince"))
    ]
    alerts += [
        Alert(
            "bad",
            f"Machine {m.get('name')} failed",
            _str(m.get("failedSince")),
            _clip(m["error"]) if m.get("error") else None,
        )
        for m in _dicts(d.get("machines"))
        if m.get("failed") or m.get("failedSince")
    ]
    nodes: list[Node] = picture.nodes if picture else []
    alerts += [
        Alert("bad", f"{n.key} {_TROUBLE.get(n.word, f'is {n.word}')}") for n in nodes if n.trouble
    ]
    rolling: dict[str, list[Node]] = {}
    for n in nodes:
        if n.badge:
            rolling.setdefault(n.service, []).append(n)
    for service, mine in sorted(rolling.items()):
        now = [n.key for n in mine if n.tone == "busy"]
        done = sum(1 for n in mine if n.word == "ready")
        replacing = f", replacing {', '.join(now)}" if now else ""
        alerts.append(
            Alert("busy", f"Rolling out {service}: {done} of {len(mine)} ready{replacing}")
        )
    return alerts


def _summary_words(summary: dict[str, Any]) -> str | None:
    said = [
        words.format(summary[k], s="" if summary[k] == 1 else "s")
        for k, words in _SUMMARY
        if summary.get(k)
    ]
    return ", ".join(said) if said else None


# --- values ---------------------------------------------------------------------------


def _headline(d: dict[str, Any]) -> Pill:
    """One pill for the deployment: Stalled, Reconciling, Ready or Not ready."""
    ready, reconciling, stalled = (_condition(d, t) for t in ("Ready", "Reconciling", "Stalled"))
    if stalled.get("status") == "True":
        return Pill("bad", "Stalled", _str(stalled.get("reason")))
    if reconciling.get("status") == "True":
        return Pill("busy", "Reconciling", _str(reconciling.get("reason")))
    if ready.get("status") == "True":
        return Pill("good", "Ready", _str(ready.get("reason")))
    if ready:
        return Pill("bad", "Not ready", _str(ready.get("reason")))
    return Pill("muted", "Unknown")


def _condition(d: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in _dicts(d.get("conditions")) if c.get("type") == kind), {})


def _is_ready(d: dict[str, Any]) -> bool:
    return _condition(d, "Ready").get("status") == "True"


def _condition_class(c: dict[str, Any]) -> str:
    true = c.get("status") == "True"
    match c.get("type"):
        case "Ready":
            return "good" if true else "bad"
        case "Stalled":
            return "bad" if true else "muted"
        case "Reconciling":
            return "busy" if true else "muted"
    return "good" if true else "muted"


def _commit_href(sha: Any, commit_url: str | None) -> str | None:
    if commit_url and isinstance(sha, str) and _SHA.fullmatch(sha):
        return commit_url.replace("{sha}", sha)
    return None


@dataclass(frozen=True)
class Moment:
    absolute: str  # 2026-11-25 04:05:46Z
    relative: str  # 3 min ago, in 2 min


def _moment(value: Any, now: datetime) -> Moment | None:
    """None when value is no ISO 8601 time (the page shows it as it is)."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = (now - moment).total_seconds()
    relative = f"{_span(seconds)} ago" if seconds >= 0 else f"in {_span(-seconds)}"
    return Moment(f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z", relative)


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def _clip(text: Any) -> str:
    """The first line, cut at CLIP characters."""
    whole = str(text).strip()
    first = whole.split("\n", 1)[0]
    return whole if first == whole and len(first) <= CLIP else first[:CLIP] + " …"


def _head_lines(text: Any) -> str:
    """The first CLIP_LINES lines, at most CLIP_CHARS characters."""
    whole = str(text).strip()
    head = "\n".join(whole.splitlines()[:CLIP_LINES])[:CLIP_CHARS]
    return head if head == whole else head + " …"


def _name(d: dict[str, Any]) -> str:
    return str(d.get("deployment") or "?")


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
