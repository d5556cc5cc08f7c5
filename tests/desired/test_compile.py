"""Store hashes and instance identities: stable, input-addressed, cascading like Disnix."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.desired.compile import package_hash
from tests.helpers import chain_model, compiled


def test_same_inputs_give_the_same_paths_and_identities() -> None:
    a, b = compiled(chain_model()), compiled(chain_model())
    assert {n: p.path for n, p in a.packages.items()} == {n: p.path for n, p in b.packages.items()}
    assert {k: i.identity for k, i in a.instances.items()} == {
        k: i.identity for k, i in b.instances.items()
    }


def test_store_hash_is_32_hex_of_the_documented_inputs() -> None:
    h = package_hash("web", "a" * 40, None, [])
    assert len(h) == 32 and int(h, 16) >= 0
    assert package_hash("web", "a" * 40, None, []) == h
    assert package_hash("web", "b" * 40, None, []) != h
    assert package_hash("web", "a" * 40, "make", []) != h
    assert package_hash("web", "a" * 40, None, ["x", "y"]) == package_hash(
        "web", "a" * 40, None, ["y", "x"]
    )


def test_changing_a_dep_changes_the_dependent_package_path_and_closure() -> None:
    model = {
        "machines": {"m": {"packages": ["app"]}},
        "packages": {
            "lib": {"src": "lib"},
            "app": {"src": "app", "deps": ["lib"]},
            "other": {"src": "other"},
        },
    }
    before = compiled(model, {"lib": "1" * 40})
    after = compiled(model, {"lib": "2" * 40})
    assert before.packages["lib"].path != after.packages["lib"].path
    assert before.packages["app"].path != after.packages["app"].path
    assert before.packages["other"].path == after.packages["other"].path
    assert set(after.packages["app"].closure) == {
        after.packages["app"].path,
        after.packages["lib"].path,
    }
    assert after.machines["m"].closure == after.packages["app"].closure


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=2, max_value=8), st.data())
def test_one_changed_src_changes_exactly_the_paths_that_depend_on_it(
    length: int, data: st.DataObject
) -> None:
    # packages q0 <- q1 <- … (each depends on the previous), plus unrelated r0..r2
    packages: dict[str, Any] = {
        f"q{i}": {"src": f"q{i}", "deps": [f"q{i - 1}"] if i else []} for i in range(length)
    }
    packages.update({f"r{i}": {"src": f"r{i}"} for i in range(3)})
    model = {"packages": packages}
    changed = data.draw(st.integers(min_value=0, max_value=length - 1))
    before = compiled(model)
    after = compiled(model, {f"q{changed}": "f" * 40})
    differing = {n for n in packages if before.packages[n].path != after.packages[n].path}
    assert differing == {f"q{i}" for i in range(changed, length)}


def test_identity_change_cascades_through_depends_on_only() -> None:
    model = chain_model(length=3)
    model["services"]["watcher"] = {
        "package": "p0",
        "command": "bin/w",
        "port": 9000,
        "activatesAfter": ["s0"],
    }
    model["distribution"]["watcher"] = ["m1"]
    before = compiled(model)
    after = compiled(model, {"p0": "9" * 40})
    changed = {
        k for k in before.instances if before.instances[k].identity != after.instances[k].identity
    }
    # s0's package changed; s1, s2 depend on it transitively; watcher uses p0 too
    assert changed == {"s0@m0", "s1@m1", "s2@m0", "watcher@m1"}
    env_only = copy.deepcopy(model)
    env_only["services"]["s2"]["env"] = {"LOG": "debug"}
    after_env = compiled(env_only)
    changed = {
        k
        for k in before.instances
        if before.instances[k].identity != after_env.instances[k].identity
    }
    assert changed == {"s2@m0"}


def test_connects_to_changes_reach_an_instance_only_through_what_it_receives() -> None:
    model: dict[str, Any] = {
        "machines": {"m1": {}, "m2": {}},
        "packages": {"p": {"src": "p"}, "q": {"src": "q"}},
        "services": {
            "a": {"package": "p", "command": "bin/a", "port": 8100, "connectsTo": ["b"]},
            "b": {"package": "q", "command": "bin/b", "port": 8200, "connectsTo": ["a"]},
        },
        "distribution": {"a": ["m1"], "b": ["m2"]},
    }
    base = compiled(model)
    # b's package changes: a only receives b's host and port, which did not change
    new_pkg = compiled(model, {"q": "7" * 40})
    assert new_pkg.instances["a@m1"].identity == base.instances["a@m1"].identity
    assert new_pkg.instances["b@m2"].identity != base.instances["b@m2"].identity
    # b's port changes: a receives it, so a changes too (cycles through connectsTo are fine)
    moved = copy.deepcopy(model)
    moved["services"]["b"]["port"] = 8201
    new_port = compiled(moved)
    assert new_port.instances["a@m1"].identity != base.instances["a@m1"].identity
    assert new_port.instances["a@m1"].receives["b"].port == 8201


def test_receives_lists_own_machine_first_then_distribution_order() -> None:
    model: dict[str, Any] = {
        "machines": {"m1": {}, "m2": {}, "m3": {}},
        "packages": {"p": {"src": "p"}},
        "services": {
            "api": {"package": "p", "command": "bin/api", "port": 8080},
            "web": {"package": "p", "command": "bin/web", "port": 8090, "dependsOn": ["api"]},
        },
        "distribution": {"api": ["m1", "m2", "m3"], "web": ["m2", "m3"]},
    }
    d = compiled(model)
    addr = {m: d.machines[m].address for m in d.machines}
    got = d.instances["web@m3"].receives["api"]
    assert got.host == addr["m3"]
    assert got.hosts == (f"{addr['m3']}:8080", f"{addr['m1']}:8080", f"{addr['m2']}:8080")


def test_sqlite_database_is_received_as_a_path() -> None:
    model: dict[str, Any] = {
        "machines": {"m1": {}},
        "packages": {"db": {"src": "db"}, "app": {"src": "app"}},
        "services": {
            "staff-db": {"package": "db", "type": "sqlite-database"},
            "app": {"package": "app", "command": "bin/app", "dependsOn": ["staff-db"]},
        },
        "distribution": {"staff-db": ["m1"], "app": ["m1"]},
    }
    got = compiled(model).instances["app@m1"].receives["staff-db"]
    assert got.path == "state/staff-db/staff-db.sqlite"
    assert got.port is None


def test_service_order_holds_depends_on_and_activates_after_of_deployed_services() -> None:
    model = chain_model(length=3)
    model["services"]["late"] = {"package": "p0", "command": "x", "activatesAfter": ["s2"]}
    model["services"]["undeployed"] = {"package": "p0", "command": "x"}
    model["distribution"]["late"] = ["m0"]
    d = compiled(model)
    assert d.service_order == {"s0": (), "s1": ("s0",), "s2": ("s1",), "late": ("s2",)}
