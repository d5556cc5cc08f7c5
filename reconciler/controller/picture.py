"""The picture of one deployment (SPEC §12), laid out here and drawn by the page's
template as inline SVG: machines are horizontal boxes, one above the other; inside them
the instances stand in columns by their service's dependency depth — what nothing
depends on at the left, each dependency one column right of the deepest service that
depends on it — with an arrow per dependency. A deployment
whose instances say nothing about dependencies gets a plain grid instead.

Pure: a status document in, coordinates and tones out. No graphviz, no I/O; the page
decides how a tone looks (`templates/page.css`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

NODE_W, NODE_H = 188, 50
COL_GAP, ROW_GAP = 80, 12
PAD, HEAD = 14, 30  # inside a machine box: padding, and the header strip with its name
BOX_GAP = 14  # between machine boxes
MIN_WIDTH = 420  # room for a machine's header on one-column pictures
GRID_COLUMNS, GRID_GAP = 3, 20  # the grid drawn when no dependencies are known
SIDE_SHARE = 0.6  # of a node's side where arrows leave and arrive
NAME_CHARS = 22  # of a service name on a node (the whole key is in its tooltip)

BAD_STATES = frozenset({"dead", "missing", "failed"})


@dataclass(frozen=True)
class Node:
    key: str
    service: str
    x: int
    y: int
    tone: str  # good | bad | warn | busy | wait | muted
    label: str  # the service name, clipped
    word: str  # what it is doing: healthy, dead, replacing, …
    detail: str  # ":8000", or the type when it has no port
    badge: str | None  # "batch 2/3" while a rollout touches it
    href: str  # the tail of its log
    title: str  # the tooltip: every fact in words

    @property
    def trouble(self) -> bool:
        return self.tone == "bad"


@dataclass(frozen=True)
class Box:
    name: str
    x: int
    y: int
    w: int
    h: int
    tone: str  # ok | unreachable | failed
    facts: str  # "local · 127.0.88.1"
    error: str | None  # why it is unreachable
    failed_since: str | None  # as the document says it (the page formats it)
    empty: bool


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: str  # SVG path data
    tone: str  # bad: it leads to an instance in trouble; near: on one machine; else far


@dataclass(frozen=True)
class Picture:
    width: int
    height: int
    boxes: list[Box]
    nodes: list[Node]
    edges: list[Edge]

    @property
    def trouble(self) -> list[Node]:
        return [n for n in self.nodes if n.trouble]


def draw(deployment: Mapping[str, Any]) -> Picture | None:
    """The picture of a status document; None when it has no machines or instances."""
    instances = sorted(
        (_Placed.of(i) for i in _dicts(deployment.get("instances"))), key=lambda p: p.key
    )
    machines = {str(m.get("name")): m for m in _dicts(deployment.get("machines"))}
    for p in instances:  # an instance on a machine the document does not list still shows
        machines.setdefault(p.machine, {"name": p.machine})
    if not machines:
        return None
    deps = {p.service: _strings(p.doc.get("dependsOn")) for p in instances}
    slots = _slots(instances, deps)
    gap = COL_GAP if any(deps.values()) else GRID_GAP  # room for arrows only when drawn
    count = max((c for c, _ in slots.values()), default=0) + 1
    width = max(MIN_WIDTH, 2 * PAD + count * NODE_W + (count - 1) * gap)
    name = str(deployment.get("deployment") or "?")

    boxes, nodes, y = [], [], 0
    for machine in sorted(machines):
        mine = [p for p in instances if p.machine == machine]
        rows = max((slots[p.key][1] + 1 for p in mine), default=1)
        height = HEAD + PAD + rows * NODE_H + (rows - 1) * ROW_GAP
        boxes.append(_box(machines[machine], y, width, height, empty=not mine))
        for p in mine:
            column, row = slots[p.key]
            x = PAD + column * (NODE_W + gap)
            nodes.append(_node(p, name, x, y + HEAD + row * (NODE_H + ROW_GAP)))
        y += height + BOX_GAP
    return Picture(width, y - BOX_GAP, boxes, nodes, _edges(instances, deps, nodes))


def columns(deps: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """Each deployed service's column: its depth counted from the services nothing
    depends on, so a dependency stands right next to what needs it."""
    dependents: dict[str, list[str]] = {s: [] for s in deps}
    for service, needs in deps.items():
        for d in needs:
            if d in dependents and d != service:
                dependents[d].append(service)
    return ranks(dependents)


def ranks(deps: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """Each service's dependency depth: 0 without dependencies, else one more than its
    deepest dependency. Unknown dependencies count as depth 0; a cycle (the models
    forbid them) is cut where it closes."""
    known: dict[str, int] = {}

    def depth(service: str, path: frozenset[str]) -> int:
        if service in known:
            return known[service]
        below = [depth(d, path | {service}) for d in deps.get(service, ()) if d not in path]
        found = 1 + max(below) if below else 0
        known[service] = found
        return found

    for service in sorted(deps):
        depth(service, frozenset())
    return known


# --- layout ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Placed:
    """An instance document with its names made sure of: a key says `service@machine`
    when the document leaves them out."""

    key: str
    service: str
    machine: str
    doc: Mapping[str, Any]

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> _Placed:
        key = str(doc.get("key") or "?")
        service, _, machine = key.partition("@")
        return cls(key, str(doc.get("service") or service), str(doc.get("machine") or machine), doc)


def _slots(instances: list[_Placed], deps: Mapping[str, list[str]]) -> dict[str, tuple[int, int]]:
    """key → (column, row inside its machine box)."""
    by_machine: dict[str, list[_Placed]] = {}
    for p in instances:
        by_machine.setdefault(p.machine, []).append(p)
    slots: dict[str, tuple[int, int]] = {}
    if not any(deps.values()):
        for mine in by_machine.values():
            for n, p in enumerate(mine):
                slots[p.key] = (n % GRID_COLUMNS, n // GRID_COLUMNS)
        return slots
    column_of = columns(deps)
    for mine in by_machine.values():
        taken: dict[int, int] = {}
        for p in sorted(mine, key=lambda p: (column_of[p.service], p.key)):
            column = column_of[p.service]
            slots[p.key] = (column, taken.get(column, 0))
            taken[column] = taken.get(column, 0) + 1
    return slots


def _edges(
    instances: list[_Placed], deps: Mapping[str, list[str]], nodes: list[Node]
) -> list[Edge]:
    """An arrow from each instance to the instance of each dependency it talks to: the
    one on its own machine, else the first (as `reconciler graph` draws it). Arrows
    leave and arrive spread over a node's side, in the order of the other ends, so a
    service with many dependencies does not draw a knot."""
    at = {n.key: n for n in nodes}
    machine = {p.key: p.machine for p in instances}
    placed: dict[str, list[_Placed]] = {}
    for p in instances:
        placed.setdefault(p.service, []).append(p)
    pairs = []
    for p in instances:
        for dep in deps.get(p.service, []):
            candidates = placed.get(dep, [])
            same = [t for t in candidates if t.machine == p.machine]
            pairs += [(at[p.key], at[t.key]) for t in (same or candidates)[:1]]
    leave = _spread(pairs, lambda pair: pair[0], lambda pair: pair[1])
    arrive = _spread(pairs, lambda pair: pair[1], lambda pair: pair[0])
    return [
        Edge(
            source.key,
            target.key,
            _curve(source.x + NODE_W, leave[n], target.x - 3, arrive[n]),
            "bad" if target.trouble else "near" if machine[source.key] == machine[target.key]
            else "far",
        )
        for n, (source, target) in enumerate(pairs)
    ]  # fmt: skip


def _spread(
    pairs: list[tuple[Node, Node]],
    end: Callable[[tuple[Node, Node]], Node],
    other: Callable[[tuple[Node, Node]], Node],
) -> list[int]:
    """Per pair, the height at which it meets `end`'s side: the pairs meeting the same
    node share the middle of its side, ordered by the other end's height."""
    at: list[int] = [0] * len(pairs)
    by_node: dict[str, list[int]] = {}
    for n, pair in enumerate(pairs):
        by_node.setdefault(end(pair).key, []).append(n)
    for ns in by_node.values():
        ns.sort(key=lambda n: (other(pairs[n]).y, other(pairs[n]).x))
        node = end(pairs[ns[0]])
        for k, n in enumerate(ns):
            share = (k + 1) / (len(ns) + 1)  # within the middle SIDE_SHARE of the side
            at[n] = round(node.y + NODE_H * ((1 - SIDE_SHARE) / 2 + SIDE_SHARE * share))
    return at


def _curve(x1: int, y1: int, x2: int, y2: int) -> str:
    bend = max(24, (x2 - x1) // 2)
    return f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"


# --- what a node and a box say --------------------------------------------------------


def _node(p: _Placed, deployment: str, x: int, y: int) -> Node:
    i, key, service = p.doc, p.key, p.service
    tone, word = tone_of(i)
    rollout = _dict(i.get("rollout"))
    batch, batches = rollout.get("batch"), rollout.get("batches")
    badge = f"batch {batch}/{batches}" if batch is not None and batches is not None else None
    port = i.get("port")
    detail = f":{port}" if port is not None else str(i.get("type") or "")
    facts = [key, f"{i.get('type') or 'instance'}, {i.get('state') or 'state unknown'}"]
    health = i.get("healthy")
    facts.append("no health check" if health is None else "healthy" if health else "failing")
    if i.get("pid") is not None:
        facts.append(f"pid {i['pid']}")
    if badge:
        facts.append(f"rollout {badge}, {rollout.get('phase') or '?'}")
    facts.append("click for the tail of its log")
    return Node(
        key=key,
        service=service,
        x=x,
        y=y,
        tone=tone,
        label=clip(service, NAME_CHARS),
        word=word,
        detail=detail,
        badge=badge,
        href=log_url(deployment, key),
        title="\n".join(facts),
    )


def tone_of(i: Mapping[str, Any]) -> tuple[str, str]:
    """An instance's tone and the word for it. Trouble first: a dead instance or a
    failing health check is bad whatever a rollout says about it."""
    state, healthy = i.get("state"), i.get("healthy")
    phase = _dict(i.get("rollout")).get("phase")
    if state in BAD_STATES:
        return "bad", str(state)
    if healthy is False:
        return "bad", "failing"
    if state == "drifted":
        return "warn", "drifted"
    if phase == "replacing":
        return "busy", "replacing"
    if phase == "waiting":
        return "wait", "waiting"
    if state == "active":
        return "good", "ready" if phase == "ready" else "healthy" if healthy else "active"
    if state in (None, "unknown"):
        return "muted", "unknown"
    return "bad", str(state)


def _box(m: Mapping[str, Any], y: int, width: int, height: int, empty: bool) -> Box:
    failed = bool(m.get("failed")) or bool(m.get("failedSince"))
    reachable = m.get("reachable")
    tone = "failed" if failed else "unreachable" if reachable is False else "ok"
    facts = " · ".join(str(v) for v in (m.get("targetEnv"), m.get("address")) if v)
    error = m.get("error")
    return Box(
        name=str(m.get("name")),
        x=0,
        y=y,
        w=width,
        h=height,
        tone=tone,
        facts=facts,
        error=str(error) if error and tone != "ok" else None,
        failed_since=str(m["failedSince"]) if m.get("failedSince") else None,
        empty=empty,
    )


def log_url(deployment: str, key: str) -> str:
    """`@` may stand in a path segment (RFC 3986 pchar): keys stay readable."""
    d, k = quote(deployment, safe=""), quote(key, safe="@")
    return f"/api/deployments/{d}/instances/{k}/log"


def clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []
