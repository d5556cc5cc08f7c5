"""Building models in memory for the pure stages (compile, plan) without Git."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from reconciler.desired.compile import compile_deployment
from reconciler.desired.state import DesiredState
from reconciler.errors import InvalidModels
from reconciler.models.checks import check_model
from reconciler.models.load import LoadedDeployment
from reconciler.models.schema import DEFAULT_CONTAINERS, DeploymentConfig, ModelDocument
from reconciler.plan.against import as_recorded
from reconciler.plan.diff import make_plan
from reconciler.plan.types import Plan
from reconciler.state.recorded import RecordedState


def loaded(
    doc: dict[str, Any], src_trees: dict[str, str] | None = None, name: str = "test"
) -> LoadedDeployment:
    doc = copy.deepcopy(doc)
    for machine in doc.get("machines", {}).values():
        machine.setdefault("containers", copy.deepcopy(DEFAULT_CONTAINERS))
        machine.setdefault("deployment", {"targetEnv": "local"})
    model = ModelDocument.model_validate(doc)
    problems = check_model(model, {}, "models.yaml")
    if problems:
        raise InvalidModels(problems)
    trees = {p: (src_trees or {}).get(p, f"tree-of-{p}") for p in model.packages}
    return LoadedDeployment(
        name, DeploymentConfig(models=["models.yaml"]), model, {}, trees, None, "test"
    )


def compiled(
    doc: dict[str, Any],
    src_trees: dict[str, str] | None = None,
    allocations: dict[str, str] | None = None,
) -> DesiredState:
    return compile_deployment(loaded(doc, src_trees), allocations or {})


def chain_model(length: int = 3, machines: int = 2) -> dict[str, Any]:
    """s0 <- s1 <- … dependsOn chain, one package each, spread over machines round-robin."""
    return {
        "machines": {f"m{i}": {} for i in range(machines)},
        "packages": {f"p{i}": {"src": f"pkgs/p{i}"} for i in range(length)},
        "services": {
            f"s{i}": {
                "package": f"p{i}",
                "command": "bin/run",
                "port": "auto",
                "dependsOn": [f"s{i - 1}"] if i else [],
            }
            for i in range(length)
        },
        "distribution": {f"s{i}": [f"m{i % machines}"] for i in range(length)},
    }


def case_plan(case: dict[str, Any]) -> Plan:
    """The plan of a table case (tests/plan/cases/*.yaml): from its `base` deployed (none:
    nothing yet) with its `failed` machines, which the plan leaves alone, to its `desired`."""
    if case.get("base") is None:
        recorded = RecordedState(deployment="test")
    else:
        recorded = as_recorded(compiled(case["base"], case.get("base_src")))
    recorded = replace(recorded, failed=frozenset(case.get("failed", ())))
    desired = compile_deployment(
        loaded(case["desired"], case.get("desired_src")),
        recorded.allocations,
        failed_machines=recorded.failed,
    )
    return make_plan(desired, recorded, **case.get("options", {}))
