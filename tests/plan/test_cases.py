"""Table-driven plan cases: tests/plan/cases/*.yaml hold a deployed base model (the
record), a desired model, and the plan expected between them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.plan.rollout import describe
from tests.helpers import case_plan

CASES = sorted((Path(__file__).parent / "cases").glob("*.yaml"))


@pytest.mark.parametrize("case_file", CASES, ids=[c.stem for c in CASES])
def test_plan_case(case_file: Path) -> None:
    case: dict[str, Any] = yaml.safe_load(case_file.read_text())
    plan = case_plan(case)
    expect = case["expect"]

    assert {c.key: c.action for c in plan.instances} == expect["instances"]
    for key, fragments in expect.get("reasons", {}).items():
        (change,) = [c for c in plan.instances if c.key == key]
        text = "; ".join(change.reasons)
        for fragment in fragments:
            assert fragment in text, f"{key}: {fragment!r} not in {text!r}"
    if "activation_order" in expect:
        assert plan.activation_order == expect["activation_order"]
    if "deactivation_order" in expect:
        assert plan.deactivation_order == expect["deactivation_order"]
    assert [[m.service, m.source, m.target] for m in plan.moves] == expect.get("moves", [])
    assert sorted(c.key for c in plan.instances if c.placed_by_policy) == sorted(
        expect.get("placed_by_policy", [])
    )
    assert [describe(r) for r in plan.rollouts] == expect.get("rollouts", [])
    assert len(plan.warnings) == len(expect.get("warnings", []))
    for warning, fragment in zip(plan.warnings, expect.get("warnings", []), strict=True):
        assert fragment in warning
    if "machines" in expect:
        assert {m.name: m.action for m in plan.machines} == expect["machines"]
    if "transfers" in expect:
        assert {t.machine: len(t.paths) for t in plan.transfers} == expect["transfers"]
    if "profiles" in expect:
        assert {p.machine: list(p.new) for p in plan.profiles} == expect["profiles"]
    assert len(plan.blockers) == len(expect.get("blockers", []))
    for blocker, fragment in zip(plan.blockers, expect.get("blockers", []), strict=True):
        assert fragment in blocker
    assert plan.has_changes == expect.get("has_changes", True)
    for key, value in expect.get("summary", {}).items():
        assert plan.summary()[key] == value, key
