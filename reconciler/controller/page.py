"""The status page: HTML rendered from the same JSON dicts the API serves, so what a
person sees and what a script reads never disagree, and tests need no controller.

Every value is escaped: subjects, authors and messages come from commits and machines.
No scripts, no external assets (the HTTP side forbids both with a Content-Security-Policy);
the page reloads itself every few seconds. Missing keys render as "–", so a deployment
the controller knows little about yet still shows.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

REFRESH_SECONDS = 5
RECENT_ATTEMPTS = 5  # history rows per deployment on the overview; the detail page shows all
CLIP = 120  # characters of a message shown in a table cell (all of it in the tooltip)
SHORT_SHA = 12
_SHA = re.compile(r"[0-9a-f]{7,64}")  # only such values become links

# A colour class per value: good (green), bad (red), warn (amber), busy (blue), muted.
_STATE_CLASS = {"active": "good", "drifted": "warn", "unknown": "muted"}  # else bad
_RESULT_CLASS = {
    "succeeded": "good",
    "applied": "good",
    "running": "busy",
    "not_applied": "muted",
}  # else bad

_CSS = """
body{font:13px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
 background:#fff;margin:0 auto;padding:10px 20px 24px;max-width:1500px}
header{display:flex;align-items:baseline;gap:14px;border-bottom:2px solid #d0d7de;
 padding-bottom:6px}
h1{font-size:19px;margin:0}
h2{font-size:16px;margin:0 0 4px;display:flex;align-items:center;gap:8px}
h3{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#57606a;margin:10px 0 2px}
a{color:#0550ae;text-decoration:none}a:hover{text-decoration:underline}
table{border-collapse:collapse;width:100%;margin:2px 0 4px}
th,td{text-align:left;padding:2px 8px;border-bottom:1px solid #e1e4e8;vertical-align:top}
th{font-weight:600;color:#57606a;background:#f6f8fa;white-space:nowrap}
td.n,th.n{text-align:right}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
section{border:1px solid #d0d7de;border-radius:6px;padding:8px 14px 6px;margin:14px 0}
p{margin:3px 0}
pre{white-space:pre-wrap;word-break:break-word;margin:4px 0;padding:6px 8px;
 background:#fff5f5;border:1px solid #ffcecb;border-radius:4px;font-size:12px}
.pill{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;font-weight:600;
 border:1px solid;white-space:nowrap}
.good{color:#116329}.pill.good{background:#dafbe1;border-color:#4ac26b}
.bad{color:#a40e26}.pill.bad{background:#ffebe9;border-color:#ff8182}
.warn{color:#7d4e00}.pill.warn{background:#fff8c5;border-color:#d4a72c}
.busy{color:#0550ae}.pill.busy{background:#ddf4ff;border-color:#54aeff}
.muted{color:#6e7781}.pill.muted{background:#f6f8fa;border-color:#d0d7de}
.facts{color:#424a53}time{white-space:nowrap}.msg{overflow-wrap:anywhere}
.whole{white-space:pre-wrap}.subject{min-width:18em}
footer{margin-top:16px;color:#6e7781;font-size:12px}
"""


def overview(
    deployments: list[dict[str, Any]],
    histories: Mapping[str, list[dict[str, Any]]],
    *,
    ready: tuple[bool, str],
    commit_url: str | None,
    now: datetime,
) -> str:
    """Every deployment: a summary table, then a section each with its recent attempts."""
    is_ready, why = ready
    banner = "" if is_ready else f'<p class="warn">Not ready yet: {_e(why)}</p>'
    if not deployments:
        body = '<p class="muted">No deployments yet.</p>'
    else:
        body = _summary(deployments, commit_url, now) + "".join(
            _section(
                d,
                histories.get(_name(d), [])[:RECENT_ATTEMPTS],
                commit_url,
                now,
                full=False,
            )
            for d in deployments
        )
    ready_count = sum(1 for d in deployments if _is_ready(d))
    return _document(f"{ready_count}/{len(deployments)} ready", banner + body, now)


def detail(
    deployment: dict[str, Any],
    history: list[dict[str, Any]],
    *,
    commit_url: str | None,
    now: datetime,
) -> str:
    """One deployment with whole messages and its whole history."""
    name = _name(deployment)
    api = f"/api/deployments/{quote(name, safe='')}"
    links = (
        f'<p><a href="/">← all deployments</a> · JSON: <a href="{_e(api)}">status</a>,'
        f' <a href="{_e(api)}/history">history</a></p>'
    )
    section = _section(deployment, history, commit_url, now, full=True)
    return _document(name, links + section, now)


def not_found(what: str, now: datetime) -> str:
    return _document("not found", f'<p>{_e(what)} · <a href="/">back</a></p>', now)


# --- page parts -----------------------------------------------------------------------


def _document(heading: str, body: str, now: datetime) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Reconciler: {_e(heading)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1><a href="/">Reconciler</a></h1><span class="muted">{_e(heading)}</span>'
        "</header>"
        f"{body}"
        f"<footer>Rendered {now.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC; reloads every"
        f' {REFRESH_SECONDS} s · <a href="/api/deployments">/api/deployments</a>'
        ' · <a href="/metrics">/metrics</a></footer>'
        "</body></html>\n"
    )


def _summary(deployments: list[dict[str, Any]], commit_url: str | None, now: datetime) -> str:
    rows = []
    for d in deployments:
        name = _name(d)
        instances = _dicts(d.get("instances"))
        machines = _dicts(d.get("machines"))
        active = sum(1 for i in instances if i.get("state") == "active")
        reachable = sum(1 for m in machines if m.get("reachable"))
        generation = _dict(d.get("generation"))
        attempt = _dict(d.get("lastAttempt"))
        rows.append(
            "<tr>"
            f'<td><a href="#{_e(_anchor(name))}"><b>{_e(name)}</b></a></td>'
            f"<td>{_headline(d)}</td>"
            f'<td class="n">{_e(generation.get("number"), "–")}</td>'
            f"<td>{_rev(d.get('lastAppliedRevision'), commit_url)}"
            f" {_when(generation.get('appliedAt'), now)}</td>"
            f"<td>{_result(attempt.get('status'))} {_when(attempt.get('finishedAt'), now)}</td>"
            f'<td class="n {_ratio_class(active, len(instances))}">{active}/{len(instances)}</td>'
            f'<td class="n {_ratio_class(reachable, len(machines))}">'
            f"{reachable}/{len(machines)}</td>"
            "</tr>"
        )
    return _table(
        [
            "deployment",
            "status",
            "gen",
            "applied",
            "last attempt",
            ("instances active", "n"),
            ("machines reachable", "n"),
        ],
        rows,
    )


def _section(
    d: dict[str, Any],
    history: list[dict[str, Any]],
    commit_url: str | None,
    now: datetime,
    full: bool,
) -> str:
    name = _name(d)
    link = f'<a href="/deployments/{_e(quote(name, safe=""))}">{_e(name)}</a>'
    generation = _dict(d.get("generation"))
    number = generation.get("number")
    gen = f'<span class="muted">generation {_e(number)}</span>' if number is not None else ""
    parts = [
        f'<section id="{_e(_anchor(name))}"><h2>{link} {_headline(d)} {gen}</h2>',
        _facts(d, commit_url, now),
        _controller(_dict(d.get("controller")), commit_url, now, full),
        "<h3>Conditions</h3>",
        _conditions(_dicts(d.get("conditions")), now, full),
    ]
    machines = _dicts(d.get("machines"))
    if machines:
        parts += ["<h3>Machines</h3>", _machines(machines, commit_url, full)]
    instances = _dicts(d.get("instances"))
    if instances:
        parts += ["<h3>Instances</h3>", _instances(instances)]
    if history:
        title = "History" if full else "Recent attempts"
        parts += [f"<h3>{title}</h3>", _history(history, commit_url, now, full)]
    parts.append("</section>")
    return "".join(parts)


def _facts(d: dict[str, Any], commit_url: str | None, now: datetime) -> str:
    if d.get("recorded") is False:
        return '<p class="muted">Nothing applied yet.</p>'
    generation = _dict(d.get("generation"))
    attempt = _dict(d.get("lastAttempt"))
    lines = []
    if generation:
        lines.append(
            f'<p class="facts">Applied {_rev(d.get("lastAppliedRevision"), commit_url)}'
            f" <b>{_e(generation.get('subject'))}</b>"
            f" by {_e(generation.get('author'), '–')}, {_when(generation.get('appliedAt'), now)}"
            "</p>"
        )
    if attempt and attempt.get("commit") != d.get("lastAppliedRevision"):
        lines.append(
            f'<p class="facts">Last attempt {_result(attempt.get("status"))}'
            f" {_rev(d.get('lastAttemptedRevision'), commit_url)}"
            f" <b>{_e(attempt.get('subject'))}</b>, {_when(attempt.get('finishedAt'), now)}</p>"
        )
    return "".join(lines)


def _controller(c: dict[str, Any], commit_url: str | None, now: datetime, full: bool) -> str:
    if not c:
        return ""
    bits = [
        f"branch <code>{_e(c.get('trackedBranch') or 'remote HEAD')}</code>",
        f"head {_rev(c.get('head'), commit_url)}",
        _switch("auto-apply", c.get("autoApply")),
        _switch("self-heal", c.get("selfHeal")),
    ]
    if c.get("paused"):
        bits.append(
            '<span class="pill warn" title="after a rollback, until a new commit">'
            "auto-apply paused</span>"
        )
    next_poll = c.get("nextPollIn")
    if isinstance(next_poll, int | float):
        bits.append(f"next poll in {_span(float(next_poll))}")
    if c.get("backoffUntil"):
        bits.append(f'<span class="warn">backing off until {_when(c["backoffUntil"], now)}</span>')
    error = c.get("lastError")
    shown = f"<pre>{_e(error if full else _clip(error))}</pre>" if error else ""
    return f'<p class="facts">{" · ".join(b for b in bits if b)}</p>{shown}'


def _conditions(conditions: list[dict[str, Any]], now: datetime, full: bool) -> str:
    rows = [
        "<tr>"
        f"<td><b>{_e(c.get('type'))}</b></td>"
        f'<td><span class="pill {_condition_class(c)}">{_e(c.get("status"))}</span></td>'
        f"<td>{_e(c.get('reason'))}</td>"
        f"<td>{_message(c.get('message'), full)}</td>"
        f"<td>{_when(c.get('lastTransitionTime'), now)}</td>"
        "</tr>"
        for c in conditions
    ]
    return _table(["type", "status", "reason", "message", "since"], rows)


def _machines(machines: list[dict[str, Any]], commit_url: str | None, full: bool) -> str:
    rows = []
    for m in machines:
        reachable = m.get("reachable")
        seen = (
            '<span class="good">yes</span>'
            if reachable
            else f'<span class="bad">no</span> {_message(m.get("error"), full)}'
        )
        rows.append(
            "<tr>"
            f"<td><b>{_e(m.get('name'))}</b></td>"
            f"<td>{_e(m.get('targetEnv'))}</td>"
            f"<td><code>{_e(m.get('address'), '–')}</code></td>"
            f"<td>{seen}</td>"
            f'<td class="n">{_e(m.get("generation"), "–")}</td>'
            f"<td>{_rev(m.get('commit'), commit_url)}</td>"
            "</tr>"
        )
    return _table(["machine", "target", "address", "reachable", ("gen", "n"), "commit"], rows)


def _instances(instances: list[dict[str, Any]]) -> str:
    rows = []
    for i in instances:
        state = i.get("state")
        healthy = i.get("healthy")
        health = (
            '<span class="muted">no check</span>'
            if healthy is None
            else (
                '<span class="good">healthy</span>'
                if healthy
                else '<span class="bad">failing</span>'
            )
        )
        rows.append(
            "<tr>"
            f"<td><code>{_e(i.get('key'))}</code></td>"
            f"<td>{_e(i.get('machine'))}</td>"
            f"<td>{_e(i.get('type'))}</td>"
            f'<td class="n">{_e(i.get("port"), "–")}</td>'
            f'<td><span class="pill {_STATE_CLASS.get(str(state), "bad")}">{_e(state)}</span></td>'
            f"<td>{health}</td>"
            f'<td class="n mono">{_e(i.get("pid"), "–")}</td>'
            "</tr>"
        )
    return _table(
        ["instance", "machine", "type", ("port", "n"), "state", "health", ("pid", "n")], rows
    )


def _history(rows: list[dict[str, Any]], commit_url: str | None, now: datetime, full: bool) -> str:
    """On the detail page a failure's whole reason gets a full-width row of its own."""
    headers: list[str | tuple[str, str]] = [("gen", "n"), "time", "commit", "author"]
    headers += ["subject", "result", "changes"] + ([] if full else ["reason"])
    cells = []
    for r in rows:
        reason = r.get("reason")
        cells.append(
            "<tr>"
            f'<td class="n">{_e(r.get("generation"), "–")}</td>'
            f"<td>{_when(r.get('time'), now)}</td>"
            f"<td>{_rev(r.get('commit'), commit_url)}</td>"
            f"<td>{_e(r.get('author'), '–')}</td>"
            f'<td class="subject">{_e(r.get("subject"))}</td>'
            f"<td>{_result(r.get('result'))}</td>"
            f"<td><code>{_e(r.get('changes'), '–')}</code></td>"
            + ("" if full else f"<td>{_message(reason, False)}</td>")
            + "</tr>"
        )
        if full and reason:
            cells.append(f'<tr><td></td><td colspan="6"><pre>{_e(reason)}</pre></td></tr>')
    return _table(headers, cells)


# --- values ---------------------------------------------------------------------------


def _table(headers: list[str | tuple[str, str]], rows: list[str]) -> str:
    head = "".join(
        f"<th>{_e(h)}</th>" if isinstance(h, str) else f'<th class="{h[1]}">{_e(h[0])}</th>'
        for h in headers
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _headline(d: dict[str, Any]) -> str:
    """One pill for the deployment: Stalled, Reconciling, Ready or Not ready."""
    status = {c.get("type"): c for c in _dicts(d.get("conditions"))}
    ready, reconciling, stalled = (status.get(t, {}) for t in ("Ready", "Reconciling", "Stalled"))
    if stalled.get("status") == "True":
        return _pill("bad", "Stalled", stalled.get("reason"))
    if reconciling.get("status") == "True":
        return _pill("busy", "Reconciling", reconciling.get("reason"))
    if ready.get("status") == "True":
        return _pill("good", "Ready", ready.get("reason"))
    if ready:
        return _pill("bad", "Not ready", ready.get("reason"))
    return _pill("muted", "Unknown", None)


def _is_ready(d: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in _dicts(d.get("conditions"))
    )


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


def _pill(cls: str, text: str, reason: Any) -> str:
    title = f' title="{_e(reason)}"' if reason else ""
    return f'<span class="pill {cls}"{title}>{_e(text)}</span>'


def _result(result: Any) -> str:
    if result is None:
        return '<span class="muted">–</span>'
    text = str(result).replace("_", " ")
    return f'<span class="pill {_RESULT_CLASS.get(str(result), "bad")}">{_e(text)}</span>'


def _switch(label: str, on: Any) -> str:
    if on is None:
        return ""
    return f'{_e(label)} <b class="{"good" if on else "muted"}">{"on" if on else "off"}</b>'


def _rev(sha: Any, commit_url: str | None) -> str:
    if not isinstance(sha, str) or not sha:
        return '<span class="muted">–</span>'
    text = f"<code>{_e(sha[:SHORT_SHA])}</code>"
    if commit_url and _SHA.fullmatch(sha):
        return f'<a href="{_e(commit_url.replace("{sha}", sha))}" title="{_e(sha)}">{text}</a>'
    return f'<span title="{_e(sha)}">{text}</span>'


def _message(text: Any, full: bool) -> str:
    if not text:
        return ""
    if full:
        return f'<span class="msg whole">{_e(text)}</span>'
    return f'<span class="msg" title="{_e(text)}">{_e(_clip(text))}</span>'


def _clip(text: Any) -> str:
    """The first line, cut at CLIP characters."""
    whole = str(text).strip()
    first = whole.split("\n", 1)[0]
    return whole if first == whole and len(first) <= CLIP else first[:CLIP] + " …"


def _when(value: Any, now: datetime) -> str:
    """`2026-11-25 04:05:46Z (3 min ago)`; the raw value when it is no ISO 8601 time."""
    if not value:
        return '<span class="muted">–</span>'
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return _e(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = (now - moment).total_seconds()
    relative = f"{_span(seconds)} ago" if seconds >= 0 else f"in {_span(-seconds)}"
    return (
        f'<time datetime="{_e(value)}">{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z'
        f' <span class="muted">({relative})</span></time>'
    )


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def _ratio_class(good: int, total: int) -> str:
    return "good" if good == total else "bad"


def _anchor(name: str) -> str:
    return f"d-{name}"


def _name(d: dict[str, Any]) -> str:
    return str(d.get("deployment") or "?")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _e(value: Any, empty: str = "") -> str:
    return empty if value is None else html.escape(str(value), quote=True)
