"""Failover of stateful services from their latest kept snapshot (SPEC §10
`failover: {stateful: latest-snapshot}`), the pure part: which instances have their
snapshot kept, when one is due, and what the plan does when their machine fails — restore
the kept snapshot elsewhere, or, without one, wait for the machine rather than start
empty."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from reconciler.desired.compile import compile_deployment, snapshots_key
from reconciler.desired.state import DesiredState
from reconciler.execute.keep_snapshots import age, due
from reconciler.models.load import LoadedDeployment
from reconciler.models.schema import FailoverSpec
from reconciler.plan.against import as_recorded
from reconciler.plan.diff import make_plan
from reconciler.plan.render import render_text
from reconciler.state.recorded import RecordedState
from reconciler.state.rows import AttemptRow, DeploymentRecord, InstanceRow
from reconciler.state.snapshots import KeptSnapshot
from tests.helpers import loaded

TAKEN = 1_796_000_000.0  # 2026-11-30T…Z


def model() -> dict[str, Any]:
    """A database placed by policy beside an api that uses it, an explicit database,
    a stateless process and a process that moves its state folder."""
    return {
        "machines": {m: {"properties": {"zone": "eu"}} for m in ("a", "b", "c")},
        "packages": {p: {"src": p} for p in ("db", "api", "web", "files")},
        "services": {
            "db": {"package": "db", "type": "sqlite-database"},
            "ledger": {"package": "db", "type": "sqlite-database"},
            "api": {"package": "api", "command": "bin/api", "port": 8000, "dependsOn": ["db"]},
            "web": {"package": "web", "command": "bin/web"},
            "files": {"package": "files", "command": "bin/files", "moveState": True},
        },
        "distribution": {
            "db": {"replicas": 1},
            "api": {"replicas": 1},
            "ledger": ["a"],
            "web": {"replicas": 1},
            "files": {"replicas": 1},
        },
    }


def with_failover(stateful: str | None) -> LoadedDeployment:
    base = loaded(model())
    spec = {"after": "60s", **({"stateful": stateful} if stateful else {})}
    config = base.config.model_copy(update={"failover": FailoverSpec.model_validate(spec)})
    return replace(base, config=config)


def deployed(stateful: str | None) -> tuple[DesiredState, RecordedState]:
    first = compile_deployment(with_failover(stateful), {})
    return first, as_recorded(first)


def after_failing(
    recorded: RecordedState, stateful: str | None, kept: dict[str, KeptSnapshot]
) -> tuple[DesiredState, RecordedState]:
    machine = recorded.instances["db@" + _db_machine(recorded)].machine
    failed = replace(recorded, failed=frozenset({machine}), snapshots=kept)
    desired = compile_deployment(
        with_failover(stateful), recorded.allocations, failed_machines=failed.failed
    )
    return desired, failed


def _db_machine(recorded: RecordedState) -> str:
    (key,) = [k for k in recorded.instances if k.startswith("db@")]
    return key.split("@")[1]


def snapshot_of(instance: str) -> KeptSnapshot:
    return KeptSnapshot(instance, instance.split("@")[1], 1, TAKEN, "/kept/db.sqlite", 8, "ab")


def test_only_stateful_instances_placed_by_policy_keep_their_snapshot() -> None:
    first, _ = deployed("latest-snapshot")
    kept = first.allocations[snapshots_key("test")]
    db, files = _key(first, "db"), _key(first, "files")
    # the explicit ledger is never moved; web keeps no state
    assert kept == f'["{db}","{files}"]'
    plain, _ = deployed(None)
    assert snapshots_key("test") not in plain.allocations


def test_a_failed_machine_s_database_is_restored_elsewhere_from_its_kept_snapshot() -> None:
    _, recorded = deployed("latest-snapshot")
    source = _db_machine(recorded)
    desired, failed = after_failing(recorded, "latest-snapshot", {f"db@{source}": _snap(source)})
    plan = make_plan(desired, failed)
    target = _key(desired, "db").split("@")[1]
    assert target != source
    changes = {c.key: c for c in plan.instances}
    assert changes[f"db@{target}"].action == "activate"
    assert "restored from the snapshot of 2026-11-30T" in "; ".join(changes[f"db@{target}"].reasons)
    assert changes[f"db@{source}"].action == "lost"  # the failed machine is not touched
    assert [(m.service, m.source, m.target) for m in plan.moves] == [("db", source, target)]
    # the api that uses it starts after it, beside it
    assert plan.activation_order.index(f"db@{target}") < plan.activation_order.index(
        f"api@{target}"
    )
    assert any(
        w.startswith(f"db@{target}: its state is on failed machine {source}: restored from")
        and "what changed there since is lost" in w
        for w in plan.warnings
    )
    assert f"State of db moves {source} → {target}" in render_text(plan)


def test_without_a_kept_snapshot_it_waits_for_its_machine() -> None:
    _, recorded = deployed("latest-snapshot")
    source = _db_machine(recorded)
    desired, failed = after_failing(recorded, "latest-snapshot", {})
    plan = make_plan(desired, failed)
    target = _key(desired, "db").split("@")[1]
    assert {c.key: c.action for c in plan.instances}[f"db@{target}"] == "lost"
    assert not [m for m in plan.moves if m.service == "db"]
    assert f"db@{target}: its state is on failed machine {source}: it starts once" in "\n".join(
        plan.warnings
    )


def test_a_snapshot_kept_of_another_instance_does_not_count() -> None:
    _, recorded = deployed("latest-snapshot")
    source = _db_machine(recorded)
    other = next(m for m in "abc" if m != source)
    desired, failed = after_failing(recorded, "latest-snapshot", {f"db@{other}": _snap(other)})
    plan = make_plan(desired, failed)
    assert not [m for m in plan.moves if m.service == "db"]


def test_without_latest_snapshot_the_database_stays_on_the_failed_machine() -> None:
    _, recorded = deployed(None)
    source = _db_machine(recorded)
    desired, failed = after_failing(recorded, None, {f"db@{source}": _snap(source)})
    plan = make_plan(desired, failed)
    assert f"db@{source}" in desired.instances
    assert not plan.moves
    assert any(
        f"db: its state is on {source}, which failed; left there" in w for w in plan.warnings
    )


def _snap(machine: str) -> KeptSnapshot:
    return snapshot_of(f"db@{machine}")


def _key(desired: DesiredState, service: str) -> str:
    (key,) = [k for k, i in desired.instances.items() if i.service == service]
    return key


# --- when a snapshot is due ------------------------------------------------------------


def record(generation: int, instances: dict[str, str]) -> DeploymentRecord:
    attempt = AttemptRow(
        "x", generation, None, None, None, None, None, "t", "t", "succeeded", None, None
    )
    rows = [
        InstanceRow(key, key.split("@")[0], machine, "sqlite-database", "id", "p", None, 1, None)
        for key, machine in instances.items()
    ]
    return DeploymentRecord("test", None, None, [attempt], [], rows)


def test_a_snapshot_is_due_when_never_kept_after_a_new_generation_or_an_interval() -> None:
    r = record(2, {"db@a": "a", "db@b": "b", "other@c": "c"})
    now = TAKEN + 10
    fresh = replace(snapshot_of("db@a"), generation=2)
    assert due(r, ["db@a", "db@b"], {}, {"a", "b"}, 30, now) == ["db@a", "db@b"]
    assert due(r, ["db@a"], {"db@a": fresh}, {"a"}, 30, now) == []
    assert due(r, ["db@a"], {"db@a": fresh}, {"a"}, 5, now) == ["db@a"]  # an interval ago
    older = replace(fresh, generation=1)  # taken before the last attempt
    assert due(r, ["db@a"], {"db@a": older}, {"a"}, 30, now) == ["db@a"]
    assert due(r, ["db@b"], {}, {"a"}, 30, now) == []  # b does not answer
    assert due(r, ["db@gone"], {}, {"a", "b"}, 30, now) == []  # not recorded


def test_ages_read_as_words() -> None:
    assert [age(s) for s in (0.4, 42, 119, 120, 7300, 200_000)] == [
        "0 s",
        "42 s",
        "119 s",
        "2 min",
        "2 h",
        "2 d",
    ]
