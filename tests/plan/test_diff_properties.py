"""Properties of the diff on generated models: a deployed state plans as no change; from
nothing everything activates in an order that respects dependsOn."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from reconciler.plan.against import as_recorded
from reconciler.plan.diff import make_plan
from reconciler.state.recorded import RecordedState
from tests.helpers import compiled


@st.composite
def models(draw: st.DrawFn) -> dict[str, Any]:
    machines = [f"m{i}" for i in range(draw(st.integers(1, 3)))]
    n = draw(st.integers(1, 8))
    services: dict[str, Any] = {}
    distribution: dict[str, list[str]] = {}
    for i in range(n):
        earlier = [f"s{j}" for j in range(i)]
        services[f"s{i}"] = {
            "package": f"p{i % 3}",
            "command": "bin/run",
            "port": "auto",
            "dependsOn": draw(st.lists(st.sampled_from(earlier), unique=True)) if earlier else [],
            "connectsTo": draw(st.lists(st.sampled_from(earlier), unique=True, max_size=1))
            if earlier
            else [],
        }
        distribution[f"s{i}"] = draw(
            st.lists(st.sampled_from(machines), min_size=1, max_size=len(machines), unique=True)
        )
    return {
        "machines": {m: {} for m in machines},
        "packages": {f"p{i}": {"src": f"p{i}"} for i in range(3)},
        "services": services,
        "distribution": distribution,
    }


@given(models())
def test_what_is_deployed_plans_as_no_change(model: dict[str, Any]) -> None:
    deployed = compiled(model)
    again = compiled(model, allocations=as_recorded(deployed).allocations)
    plan = make_plan(again, as_recorded(deployed))
    assert not plan.has_changes
    assert all(c.action == "keep" for c in plan.instances)


@given(models())
def test_from_nothing_everything_activates_after_its_dependencies(model: dict[str, Any]) -> None:
    desired = compiled(model)
    plan = make_plan(desired, RecordedState(deployment="test"))
    assert {c.action for c in plan.instances} == {"activate"}
    assert sorted(plan.activation_order) == sorted(desired.instances)
    first_of: dict[str, int] = {}
    last_of: dict[str, int] = {}
    for i, key in enumerate(plan.activation_order):
        service = key.split("@")[0]
        first_of.setdefault(service, i)
        last_of[service] = i
    for name, spec in model["services"].items():
        for dep in spec["dependsOn"]:
            assert last_of[dep] < first_of[name]


@given(models(), st.data())
def test_changing_one_package_replaces_exactly_the_instances_whose_identity_changed(
    model: dict[str, Any], data: st.DataObject
) -> None:
    deployed = compiled(model)
    pkg = data.draw(st.sampled_from(["p0", "p1", "p2"]))
    changed = compiled(model, {pkg: "c" * 40}, as_recorded(deployed).allocations)
    plan = make_plan(changed, as_recorded(deployed))
    replaced = {c.key for c in plan.instances if c.action == "replace"}
    differ = {
        k
        for k in deployed.instances
        if deployed.instances[k].identity != changed.instances[k].identity
    }
    assert replaced == differ
    direct = {k for k, i in deployed.instances.items() if i.package == pkg}
    assert direct <= replaced
