"""The status page's picture (SPEC §12), from crafted status documents: what the page
receives from the controller, written out by hand for a healthy, a failing and a rolling
deployment of the example StaffTracker on three machines. The layout is checked as a
person would see it (columns by dependency depth, boxes per machine); the HTML as what a
browser gets (one linked node per instance, the ones in trouble marked, no external
assets). `test_page_browser.py` renders the same documents in Chromium."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from itertools import pairwise
from typing import Any

from reconciler.controller import page
from reconciler.controller.picture import NODE_W, Picture, columns, draw, ranks

NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
COMMIT_URL = "https://git.example.org/org/models/commit/{sha}"
APPLIED = "a41c09e2d3b1f6a7c8e9d0b1a2c3d4e5f6a7b8c9"
NEXT = "5d1e0c4a9b7f2e3d4c5b6a7980f1e2d3c4b5a697"

# The example repository's services: what each depends on, where it runs, its port.
SERVICES: dict[str, tuple[list[str], str, int | None]] = {
    "room-db": ([], "sqlite-database", None),
    "staff-db": ([], "sqlite-database", None),
    "zipcode-db": ([], "sqlite-database", None),
    "geolocation-service": ([], "process", 8000),
    "room-service": (["room-db"], "process", 8001),
    "staff-service": (["staff-db"], "process", 8003),
    "zipcode-service": (["zipcode-db"], "process", 8002),
    "stafftracker": (
        ["staff-service", "room-service", "zipcode-service", "geolocation-service"],
        "process",
        8080,
    ),
}
PLACEMENT = {
    "eu-1": ["geolocation-service", "stafftracker", "room-db", "room-service"],
    "eu-2": ["staff-db", "staff-service", "stafftracker"],
    "eu-3": ["zipcode-db", "zipcode-service", "stafftracker"],
}


def _ago(now: datetime, delta: timedelta) -> str:
    return (now - delta).isoformat()


def _instance(service: str, machine: str, pid: int) -> dict[str, Any]:
    deps, kind, port = SERVICES[service]
    return {
        "key": f"{service}@{machine}",
        "service": service,
        "machine": machine,
        "type": kind,
        "port": port,
        "state": "active",
        "healthy": None if port is None else True,
        "pid": None if port is None else pid,
        "identity": f"{pid:064x}",
        "observedIdentity": f"{pid:064x}",
        "dependsOn": deps,
    }


def _conditions(now: datetime, *said: str) -> list[dict[str, Any]]:
    """Ready, Reconciling and Stalled from "True AllActive", "False Idle", …"""
    since = _ago(now, timedelta(minutes=3))
    return [
        {"type": kind, "status": status, "reason": reason, "message": "",
         "lastTransitionTime": since}
        for kind, (status, reason) in zip(
            ("Ready", "Reconciling", "Stalled"), (s.split() for s in said), strict=True
        )
    ]  # fmt: skip


def healthy(now: datetime = NOW) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generation 7 applied ten minutes ago; every instance up and healthy."""
    placed = [(s, m) for m, services in PLACEMENT.items() for s in services]
    instances = [_instance(s, m, 4100 + n) for n, (s, m) in enumerate(placed)]
    status: dict[str, Any] = {
        "formatVersion": 1,
        "deployment": "production",
        "recorded": True,
        "generation": {
            "number": 7,
            "commit": APPLIED,
            "author": "Grace Hopper",
            "subject": "Three zones: move the zipcode service to eu-3",
            "commitTime": _ago(now, timedelta(minutes=11)),
            "appliedAt": _ago(now, timedelta(minutes=10)),
        },
        "lastAttempt": {
            "id": "attempt-7",
            "status": "succeeded",
            "reason": None,
            "generation": 7,
            "commit": APPLIED,
            "subject": "Three zones: move the zipcode service to eu-3",
            "startedAt": _ago(now, timedelta(minutes=11)),
            "finishedAt": _ago(now, timedelta(minutes=10)),
            "changes": "+3 ~2 -3",
        },
        "lastAppliedRevision": APPLIED,
        "lastAttemptedRevision": APPLIED,
        "conditions": _conditions(now, "True AllActive", "False Idle", "False NotStalled"),
        "machines": [
            {
                "name": name,
                "targetEnv": "ssh",
                "address": f"10.0.{n}.10",
                "reachable": True,
                "error": None,
                "generation": 7,
                "commit": APPLIED,
            }
            for n, name in enumerate(PLACEMENT, start=1)
        ],
        "instances": sorted(instances, key=lambda i: i["key"]),
        "controller": {
            "autoApply": True,
            "selfHeal": True,
            "paused": False,
            "nextPollIn": 41.0,
            "backoffUntil": None,
            "lastError": None,
            "trackedBranch": "main",
            "head": APPLIED,
        },
    }
    history = [
        {
            "generation": 7,
            "time": _ago(now, timedelta(minutes=10)),
            "commit": APPLIED,
            "author": "Grace Hopper",
            "subject": "Three zones: move the zipcode service to eu-3",
            "result": "succeeded",
            "reason": None,
            "changes": "+3 ~2 -3",
            "attempt": "attempt-7",
        }
    ]
    return status, history


def failing(now: datetime = NOW) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Machine eu-3 failed (unreachable for six minutes), staff-service@eu-2 fails its
    health check, and the next commit's apply failed and was rolled back."""
    status, history = healthy(now)
    eu3 = next(m for m in status["machines"] if m["name"] == "eu-3")
    eu3.update(
        reachable=False,
        error="ssh 10.0.3.10:22: connection timed out after 5 s",
        failed=True,
        failedSince=_ago(now, timedelta(minutes=6)),
        generation=None,
        commit=None,
    )
    for i in status["instances"]:
        if i["machine"] == "eu-3":
            i.update(state="unknown", healthy=None, pid=None)
        if i["key"] == "staff-service@eu-2":
            i["healthy"] = False
    reason = (
        "health check of staff-service@eu-2 failed: GET http://127.0.0.1:8003/health "
        "answered 500 after 30 s\n--- reconciler: rolled back staff-service@eu-2, "
        "stafftracker@eu-1, stafftracker@eu-2"
    )
    status["lastAttempt"] = {
        "id": "attempt-8",
        "status": "rolled_back",
        "reason": reason,
        "generation": None,
        "commit": NEXT,
        "subject": "staff-service: read the new <badge> column",
        "startedAt": _ago(now, timedelta(minutes=2)),
        "finishedAt": _ago(now, timedelta(minutes=1)),
        "changes": "+0 ~3 -0",
    }
    status["lastAttemptedRevision"] = NEXT
    status["conditions"] = _conditions(now, "False AttemptFailed", "False Idle", "True ApplyFailed")
    status["conditions"][2]["message"] = reason
    status["controller"].update(
        head=NEXT,
        lastError="apply failed: " + reason.splitlines()[0],
        backoffUntil=(now + timedelta(seconds=40)).isoformat(),
        lastPlan=(
            f"Deployment production at {NEXT[:12]}, against generation 7 ({APPLIED[:12]})\n\n"
            "eu-1:\n"
            "  ~ stafftracker@eu-1                        replace  (dependsOn staff-service)\n"
            "  = 3 unchanged\n\n"
            "eu-2:\n"
            "  + transfer 1 store path (18.2 KiB)\n"
            "  ~ staff-service@eu-2                       replace  (package staff-service)\n"
            "  ~ stafftracker@eu-2                        replace  (dependsOn staff-service)\n"
            "  = 1 unchanged\n\n"
            "Plan: 1 store path to transfer (18.2 KiB known), 0 to activate, 3 to replace, "
            "0 to deactivate, 7 unchanged."
        ),
    )
    history.insert(
        0,
        {
            "generation": None,
            "time": _ago(now, timedelta(minutes=1)),
            "commit": NEXT,
            "author": "Mallory Jones",
            "subject": status["lastAttempt"]["subject"],
            "result": "rolled_back",
            "reason": reason,
            "changes": "+0 ~3 -0",
            "attempt": "attempt-8",
            "summary": {"toReplace": 3, "unchanged": 7, "pathsToTransfer": 1},
        },
    )
    return status, history


def rolling(now: datetime = NOW) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The next commit is being applied: stafftracker rolls one instance at a time;
    eu-1's is done, eu-2's is being replaced, eu-3's waits for the last batch."""
    status, history = healthy(now)
    phases = {"eu-1": (1, "ready"), "eu-2": (2, "replacing"), "eu-3": (3, "waiting")}
    for i in status["instances"]:
        if i["service"] == "stafftracker":
            batch, phase = phases[i["machine"]]
            i["rollout"] = {"batch": batch, "batches": 3, "phase": phase}
            if phase == "replacing":
                i.update(healthy=None, pid=None)
    status["lastAttempt"] = {
        "id": "attempt-8",
        "status": "running",
        "reason": None,
        "generation": None,
        "commit": NEXT,
        "subject": "stafftracker: show rooms on a map",
        "startedAt": _ago(now, timedelta(seconds=40)),
        "finishedAt": None,
        "changes": "+0 ~3 -0",
    }
    status["lastAttemptedRevision"] = NEXT
    status["conditions"] = _conditions(
        now, "False AttemptInFlight", "True Applying", "False NotStalled"
    )
    status["controller"]["head"] = NEXT
    return status, history


def render(status: dict[str, Any], history: list[dict[str, Any]]) -> str:
    return page.overview(
        [status], {"production": history}, ready=(True, "ok"), commit_url=COMMIT_URL, now=NOW
    )


class Elements(HTMLParser):
    """Every start tag with its attributes, in document order."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def having(self, tag: str, cls: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and cls in a.get("class", "").split()]


# --- the layout -----------------------------------------------------------------------


def _picture(status: dict[str, Any]) -> Picture:
    picture = draw(status)
    assert picture is not None
    return picture


def test_services_stand_in_columns_by_dependency_depth() -> None:
    deps = {s: needs for s, (needs, _, _) in SERVICES.items()}
    assert ranks(deps)["stafftracker"] == 2 and ranks(deps)["room-db"] == 0
    assert columns(deps) == {
        "stafftracker": 0,
        "room-service": 1,
        "staff-service": 1,
        "zipcode-service": 1,
        "geolocation-service": 1,  # next to the one service that needs it
        "room-db": 2,
        "staff-db": 2,
        "zipcode-db": 2,
    }
    nodes = {n.key: n for n in _picture(healthy()[0]).nodes}
    assert nodes["stafftracker@eu-1"].x < nodes["room-service@eu-1"].x < nodes["room-db@eu-1"].x
    assert nodes["stafftracker@eu-1"].x == nodes["stafftracker@eu-2"].x


def test_instances_sit_inside_their_machines_box() -> None:
    picture = _picture(healthy()[0])
    assert [b.name for b in picture.boxes] == ["eu-1", "eu-2", "eu-3"]
    boxes = {b.name: b for b in picture.boxes}
    for n in picture.nodes:
        box = boxes[n.key.split("@")[1]]
        assert box.x < n.x and n.x + NODE_W < box.x + box.w
        assert box.y < n.y and n.y < box.y + box.h
    tops = sorted((b.y, b.y + b.h) for b in picture.boxes)
    assert all(bottom < top for (_, bottom), (top, _) in pairwise(tops))


def test_an_arrow_leads_to_the_dependency_on_the_same_machine_or_the_first() -> None:
    edges = {(e.source, e.target) for e in _picture(healthy()[0]).edges}
    assert ("room-service@eu-1", "room-db@eu-1") in edges
    assert ("stafftracker@eu-2", "staff-service@eu-2") in edges
    assert ("stafftracker@eu-2", "geolocation-service@eu-1") in edges  # the only one
    assert len(edges) == 3 + 3 * 4


def test_without_dependencies_the_instances_stand_in_a_grid() -> None:
    status = copy.deepcopy(healthy()[0])
    for i in status["instances"]:
        del i["dependsOn"]
    picture = _picture(status)
    assert not picture.edges
    assert len({(n.x, n.y) for n in picture.nodes}) == len(status["instances"])


def test_trouble_is_what_is_dead_or_failing_whatever_else_it_is_doing() -> None:
    nodes = {n.key: n for n in _picture(failing()[0]).nodes}
    assert {k for k, n in nodes.items() if n.trouble} == {"staff-service@eu-2"}
    assert nodes["staff-service@eu-2"].word == "failing"
    assert nodes["zipcode-service@eu-3"].tone == "muted"  # its machine is not observed
    boxes = {b.name: b.tone for b in _picture(failing()[0]).boxes}
    assert boxes == {"eu-1": "ok", "eu-2": "ok", "eu-3": "failed"}


def test_a_rollout_shows_its_batches() -> None:
    nodes = {n.key: n for n in _picture(rolling()[0]).nodes}
    assert [(nodes[f"stafftracker@{m}"].badge, nodes[f"stafftracker@{m}"].tone) for m in
            ("eu-1", "eu-2", "eu-3")] == [
        ("batch 1/3", "good"), ("batch 2/3", "busy"), ("batch 3/3", "wait")
    ]  # fmt: skip
    assert not any(n.trouble for n in nodes.values())


def test_odd_documents_still_draw() -> None:
    assert draw({"deployment": "bare"}) is None
    picture = _picture({"instances": [{"key": "a@m", "dependsOn": ["a", "b"]}, "junk"]})
    assert [b.name for b in picture.boxes] == ["m"]  # a machine only instances name
    assert ranks({"a": ["b"], "b": ["a"]}) in ({"a": 1, "b": 0}, {"a": 0, "b": 1})


# --- the HTML -------------------------------------------------------------------------


def test_one_linked_node_per_instance() -> None:
    status, history = healthy()
    html = render(status, history)
    found = Elements(html)
    nodes = found.having("a", "node")
    assert sorted(a["data-key"] for a in nodes) == sorted(i["key"] for i in status["instances"])
    for a in nodes:
        assert a["href"] == f"/api/deployments/production/instances/{a['data-key']}/log"
    assert len(found.having("g", "machine")) == 3
    assert "All 10 instances on 3 machines are up." in html


def test_the_failing_deployment_marks_its_trouble_and_shows_the_refused_plan() -> None:
    status, history = failing()
    html = render(status, history)
    found = Elements(html)
    assert [a["data-key"] for a in found.having("a", "trouble")] == ["staff-service@eu-2"]
    assert [g["data-machine"] for g in found.having("g", "m-failed")] == ["eu-3"]
    assert "Machine eu-3 failed" in html and "(6 min ago)" in html
    assert "staff-service@eu-2 fails its health check" in html
    assert f'<a href="{COMMIT_URL.format(sha=NEXT)}"' in html
    assert "was rolled back" in html and "ApplyFailed" in html
    assert "answered 500 after 30 s" in html
    assert "~ staff-service@eu-2" in html  # the plan it would have applied
    assert "read the new &lt;badge&gt; column" in html


def test_without_its_plan_a_failed_commit_says_what_it_would_have_done() -> None:
    status, history = failing()
    del status["controller"]["lastPlan"]
    html = render(status, history)
    assert (
        "Its plan was not recorded; it would have: replace 3 instances, "
        "transfer 1 store path, leave 7 unchanged" in html
    )


def test_an_unreachable_machine_that_has_not_failed_is_a_warning() -> None:
    status, history = healthy()
    status["machines"][0].update(reachable=False, error="ssh: host key changed")
    for i in status["instances"]:
        if i["machine"] == "eu-1":
            i.update(state="unknown", healthy=None)
    html = render(status, history)
    assert [g["data-machine"] for g in Elements(html).having("g", "m-unreachable")] == ["eu-1"]
    assert "Machine eu-1 is unreachable" in html and "ssh: host key changed" in html
    assert "are up" not in html


def test_a_refused_commit_names_the_head_and_the_cause() -> None:
    status, history = healthy()
    status["conditions"] = _conditions(NOW, "True AllActive", "False Idle", "True UntrustedCommit")
    status["controller"].update(head=NEXT, lastError=f"commit {NEXT[:12]} is not signed")
    html = render(status, history)
    assert re.search(rf"Commit <a [^>]+><code>{NEXT[:12]}</code></a> was refused", html)
    assert "is not signed" in html and "UntrustedCommit" in html


def test_the_rolling_deployment_says_how_far_it_got() -> None:
    html = render(*rolling())
    assert "Rolling out stafftracker: 1 of 3 ready, replacing stafftracker@eu-2" in html
    found = Elements(html)
    assert len(found.having("g", "badge")) == 3


def test_the_page_references_nothing_outside_itself() -> None:
    for status, history in (healthy(), failing(), rolling()):
        html = render(status, history)
        found = Elements(html)
        assert not [t for t, _ in found.tags if t in ("script", "img", "link", "iframe")]
        # the only absolute URLs are the commit links and the SVG namespace, no assets
        urls = re.findall(r"https?://[^\s\"'<)]+", html)
        assert {u for u in urls if not u.startswith("https://git.example.org/")} <= {
            "http://www.w3.org/2000/svg",
            "http://127.0.0.1:8003/health",  # a failure's reason, as text
        }
        assert "url(http" not in html and "@import" not in html
        ids = [a["id"] for _, a in found.tags if "id" in a]
        assert len(ids) == len(set(ids))
