"""Compiling the keys of SPEC §9, §10 and §12: a policy's instances are instances like
any other (identities, ports, what dependents receive, the graph), their machines are
recorded as allocations so the next compile keeps them, a failed machine is left out,
and rollouts and moveState reach the desired state."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from reconciler.desired.compile import compile_deployment, placement_key
from reconciler.desired.dot import to_dot
from reconciler.desired.state import RolloutPolicy
from reconciler.models.schema import FailoverSpec
from tests.helpers import compiled, loaded


def model() -> dict[str, Any]:
    return {
        "machines": {
            "a": {"properties": {"zone": "eu"}, "capacity": {"mem": 1024}},
            "b": {"properties": {"zone": "eu"}, "capacity": {"mem": 1024}},
            "c": {"properties": {"zone": "eu"}, "capacity": {"mem": 1024}},
            "d": {"properties": {"zone": "us"}, "capacity": {"mem": 1024}},
        },
        "packages": {"api": {"src": "api"}, "web": {"src": "web"}, "db": {"src": "db"}},
        "services": {
            "db": {"package": "db", "type": "sqlite-database"},
            "api": {
                "package": "api",
                "command": "bin/api",
                "port": "auto",
                "requires": {"mem": 600},
                "dependsOn": ["db"],
                "rollout": {"maxUnavailable": 1, "minReady": "5s"},
            },
            "web": {
                "package": "web",
                "command": "bin/web",
                "port": 8080,
                "connectsTo": ["api"],
                "moveState": True,
            },
        },
        "distribution": {
            "db": ["a", "b", "c"],
            "api": {"replicas": 2, "select": {"zone": "eu"}},
            "web": ["d"],
        },
    }


def test_policy_instances_are_instances_like_any_other() -> None:
    desired = compiled(model())
    assert sorted(k for k in desired.instances if k.startswith("api@")) == ["api@a", "api@b"]
    assert desired.placed_by_policy == {"api@a", "api@b"}
    assert desired.instances["api@a"].port == 8000
    assert desired.instances["web@d"].receives["api"].hosts == (
        f"{desired.machines['a'].address}:8000",
        f"{desired.machines['b'].address}:8000",
    )
    assert json.loads(desired.allocations[placement_key("test", "api")]) == ["a", "b"]
    assert desired.rollouts["api"] == RolloutPolicy("1", 5.0)
    assert desired.rollouts["web"] == RolloutPolicy("25%", 0.0)
    assert desired.move_state == {"web"}


def test_the_graph_draws_them_like_any_other() -> None:
    dot = to_dot(compiled(model()))
    cluster_a = dot.split('subgraph "cluster_a" {', 1)[1].split("\n  }", 1)[0]
    assert '"api@a" [label="api:8000\\nprocess"];' in cluster_a
    assert '"api@a" -> "db@a" [style=solid, label="dependsOn"];' in dot
    assert '"web@d" -> "api@a" [style=dashed, label="connectsTo"];' in dot


def test_the_recorded_placement_is_kept_and_a_failed_machine_left_out() -> None:
    first = compiled(model())
    # c now has the most room, but api stays where it was
    changed = model()
    changed["machines"]["c"]["capacity"] = {"mem": 9999}
    again = compile_deployment(loaded(changed), first.allocations)
    assert {k for k in again.instances if k.startswith("api@")} == {"api@a", "api@b"}
    assert again.instances["api@a"].identity == first.instances["api@a"].identity
    failed = compile_deployment(loaded(model()), first.allocations, failed_machines=frozenset("a"))
    assert {k for k in failed.instances if k.startswith("api@")} == {"api@b", "api@c"}
    assert failed.placement_reasons["api@c"] == "placed by policy; moved from a: machine a failed"
    assert failed.failed_machines == {"a"}
    # the database's explicit instance on a stays desired: reported, never moved
    assert "db@a" in failed.instances


def test_a_stateful_policy_stays_on_a_failed_machine_unless_failover_restores_snapshots() -> None:
    m = model()
    m["distribution"]["db"] = {"replicas": 1, "select": {"zone": "eu"}}
    m["distribution"]["api"] = ["a"]
    m["services"]["api"]["dependsOn"] = []
    first = compiled(m)
    assert first.placed_by_policy == {"db@b"}  # a has the least room: api is there
    kept = compile_deployment(loaded(m), first.allocations, failed_machines=frozenset("b"))
    assert "db@b" in kept.instances
    assert kept.notes == (
        "db: its state is on b, which failed; left there (failover: {stateful: "
        "latest-snapshot} would restore its latest snapshot on another machine)",
    )
    snapshot = loaded(m)
    config = snapshot.config.model_copy(
        update={
            "failover": FailoverSpec.model_validate({"after": "60s", "stateful": "latest-snapshot"})
        }
    )
    moved = compile_deployment(
        replace(snapshot, config=config), first.allocations, failed_machines=frozenset("b")
    )
    assert "db@c" in moved.instances and "db@b" not in moved.instances
