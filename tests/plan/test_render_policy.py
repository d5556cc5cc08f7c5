"""What a person reads in a plan about rollouts, placement by policy and state left
behind (SPEC §9, §10, §12), in each format: one table row per line they rely on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.plan.diff import make_plan
from reconciler.plan.render import render_json, render_markdown, render_text
from reconciler.plan.types import Plan
from reconciler.state.recorded import RecordedState
from tests.helpers import case_plan, compiled

CASES = Path(__file__).parent / "cases"


def plan_of(case_name: str) -> Plan:
    return case_plan(yaml.safe_load((CASES / f"{case_name}.yaml").read_text()))


TEXT = [
    ("18-rollout-and-move-state", "Rolling replacement:"),
    ("18-rollout-and-move-state", "  api: 3 instances in 3 batches of 1, minReady 5s"),
    ("18-rollout-and-move-state", "State of worker moves a → b"),
    (
        "16-policy-placement",
        "  + api@b                                    activate  (placed by policy)",
    ),
    (
        "17-failed-machine-moves-policy-instances",
        "  + api@c                                    activate  "
        "(placed by policy; moved from a: machine a failed)",
    ),
    (
        "17-failed-machine-moves-policy-instances",
        "Warning: tool@a: machine a failed; this instance is lost until it returns "
        "(explicit instances are not moved)",
    ),
    (
        "17-failed-machine-moves-policy-instances",
        "Warning: api moves a → c: its state folder (RECONCILER_STATE) on a is not moved "
        "(size not recorded); set moveState: true on api to move it",
    ),
]


@pytest.mark.parametrize(("case", "line"), TEXT)
def test_text_shows(case: str, line: str) -> None:
    assert line in render_text(plan_of(case), verbose=True).splitlines()


MARKDOWN = [
    ("18-rollout-and-move-state", "#### Rolling replacement"),
    ("18-rollout-and-move-state", "- api: 3 instances in 3 batches of 1, minReady 5s"),
    ("16-policy-placement", "| + | `api@c` | activate | placed by policy |"),
    ("17-failed-machine-moves-policy-instances", "> [!WARNING]"),
]


@pytest.mark.parametrize(("case", "line"), MARKDOWN)
def test_markdown_shows(case: str, line: str) -> None:
    assert line in render_markdown(plan_of(case)).splitlines()


def test_json_carries_batches_policy_and_warnings() -> None:
    rolled = json.loads(render_json(plan_of("18-rollout-and-move-state")))
    assert rolled["rollouts"] == [
        {
            "service": "api",
            "keys": ["api@a", "api@b", "api@c"],
            "batchSize": 1,
            "minReady": 5.0,
            "batches": [["api@a"], ["api@b"], ["api@c"]],
        }
    ]
    assert rolled["moves"] == [{"service": "worker", "source": "a", "target": "b"}]
    failed = json.loads(render_json(plan_of("17-failed-machine-moves-policy-instances")))
    by_key = {i["key"]: i for i in failed["instances"]}
    assert by_key["api@c"]["placedByPolicy"] is True
    assert by_key["tool@a"]["placedByPolicy"] is False
    assert len(failed["warnings"]) == 2


def test_a_policy_nothing_fits_blocks_the_plan_and_fewer_replicas_warn() -> None:
    model: dict[str, Any] = {
        "machines": {"a": {"properties": {"zone": "eu"}, "capacity": {"mem": 100}}},
        "packages": {"api": {"src": "api"}, "web": {"src": "web"}},
        "services": {
            "api": {"package": "api", "command": "bin/api", "requires": {"mem": 500}},
            "web": {"package": "web", "command": "bin/web"},
        },
        "distribution": {
            "api": {"replicas": 1, "select": {"zone": "eu"}},
            "web": {"replicas": 3},
        },
    }
    plan = make_plan(compiled(model), RecordedState(deployment="test"))
    assert plan.blockers == [
        "api: no machine fits any of its 1 replicas (a has no room for mem 500 (0 of 100 used)); "
        "change its select, requires or the machines' capacity"
    ]
    assert plan.warnings == [
        "web: 1 of 3 replicas placed; no other machine",
    ]
    assert "Error: api: no machine fits" in render_text(plan)
