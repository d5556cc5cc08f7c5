"""Placement by policy (SPEC §10), as a user relies on it: for random fleets and services
the same inputs place the same way, no machine holds more than its capacity, `select` is
always honoured and `spread` whenever the fleet allows, an unrelated change moves nothing,
and a failed machine's instances (and only what no longer fits) move."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reconciler.desired.placement import Explicit, Machine, Placement, Policy, place

ZONES = ["eu", "us", "ap"]
CONTAINERS = {"process": "process", "sqlite-database": "sqlite-database"}


@st.composite
def fleets(draw: st.DrawFn) -> list[Machine]:
    n = draw(st.integers(min_value=1, max_value=8))
    out = []
    for i in range(n):
        props: dict[str, object] = {"zone": draw(st.sampled_from(ZONES))}
        if draw(st.booleans()):
            props["ssd"] = draw(st.booleans())
        capacity = draw(
            st.fixed_dictionaries(
                {}, optional={"mem": st.integers(0, 4096), "slots": st.integers(0, 6)}
            )
        )
        out.append(Machine(f"m{i}", props, capacity, CONTAINERS))
    return out


@st.composite
def policies(draw: st.DrawFn) -> list[Policy]:
    n = draw(st.integers(min_value=1, max_value=5))
    out = []
    for i in range(n):
        select = draw(
            st.fixed_dictionaries(
                {}, optional={"zone": st.sampled_from(ZONES), "ssd": st.booleans()}
            )
        )
        requires = draw(
            st.fixed_dictionaries(
                {}, optional={"mem": st.integers(0, 2048), "slots": st.integers(0, 3)}
            )
        )
        out.append(
            Policy(
                service=f"s{i}",
                service_type="process",
                replicas=draw(st.integers(1, 5)),
                container="process",
                select=select,
                spread=draw(st.sampled_from([None, "zone"])),
                requires=requires,
            )
        )
    return out


def explicit_within(fleet: list[Machine], data: st.DataObject) -> list[Explicit]:
    """A few explicit instances that fit their machines' capacities (validate refuses more)."""
    out = []
    for m in fleet:
        if data.draw(st.booleans()):
            wants = {k: data.draw(st.integers(0, int(v))) for k, v in m.capacity.items()}
            out.append(Explicit("fixed", m.name, wants))
    return out


def usage(
    result: Placement, pols: list[Policy], explicit: list[Explicit]
) -> dict[str, Counter[str]]:
    used: dict[str, Counter[str]] = defaultdict(Counter)
    for e in explicit:
        used[e.machine].update(e.requires)
    for p in pols:
        for m in result.machines[p.service]:
            used[m].update(p.requires)
    return used


@settings(max_examples=300, deadline=None)
@given(fleets(), policies(), st.data())
def test_placement_is_deterministic_within_capacity_and_honours_select(
    fleet: list[Machine], pols: list[Policy], data: st.DataObject
) -> None:
    explicit = explicit_within(fleet, data)
    result = place(pols, fleet, explicit)
    assert place(pols, list(reversed(fleet)), explicit) == result
    assert place(list(reversed(pols)), fleet, explicit) == result
    machines = {m.name: m for m in fleet}
    for name, used in usage(result, pols, explicit).items():
        for res, amount in used.items():
            cap = machines[name].capacity.get(res)
            assert cap is None or amount <= cap, (name, res, amount, cap)
    for p in pols:
        placed = result.machines[p.service]
        assert len(placed) == len(set(placed)) <= p.replicas
        for name in placed:
            for key, value in p.select.items():
                assert machines[name].properties.get(key) == value
        if len(placed) < p.replicas:
            said = result.notes if placed else result.blockers
            assert any(s.startswith(f"{p.service}: ") for s in said)


@settings(max_examples=300, deadline=None)
@given(fleets(), policies())
def test_spread_goes_to_distinct_values_first(fleet: list[Machine], pols: list[Policy]) -> None:
    """Without capacities in the way, a spread policy never doubles up a zone while a
    fitting machine in an unused zone is left."""
    fleet = [replace(m, capacity={}) for m in fleet]
    result = place(pols, fleet)
    zone = {m.name: m.properties["zone"] for m in fleet}
    for p in pols:
        if p.spread is None:
            continue
        placed = result.machines[p.service]
        fitting = [
            m.name for m in fleet if all(m.properties.get(k) == v for k, v in p.select.items())
        ]
        used_zones = Counter(zone[m] for m in placed)
        free_zones = {zone[m] for m in fitting} - set(used_zones)
        if any(c > 1 for c in used_zones.values()):
            assert not free_zones, (placed, fitting)


@settings(max_examples=200, deadline=None)
@given(fleets(), policies(), st.data())
def test_an_unrelated_change_moves_nothing(
    fleet: list[Machine], pols: list[Policy], data: st.DataObject
) -> None:
    """Placed once and recorded: a new machine, a new policy with nothing required, or a
    changed property no policy selects on leaves every placed instance where it is."""
    first = place(pols, fleet)
    recorded = dict(first.machines)
    change = data.draw(st.sampled_from(["machine", "policy", "property"]))
    if change == "machine":
        fleet = [*fleet, Machine("m99", {"zone": "eu"}, {"mem": 99999, "slots": 99}, CONTAINERS)]
        again = place(pols, fleet, recorded=recorded)
    elif change == "policy":
        extra = Policy("zz", "process", 2, "process", spread="zone")
        again = place([*pols, extra], fleet, recorded=recorded)
    else:
        fleet = [replace(m, properties={**m.properties, "colour": "red"}) for m in fleet]
        again = place(pols, fleet, recorded=recorded)
    for p in pols:
        assert again.machines[p.service] == first.machines[p.service] or (
            # a replica that found no room before may find it on the new machine
            change == "machine" and set(first.machines[p.service]) < set(again.machines[p.service])
        )


@settings(max_examples=300, deadline=None)
@given(fleets(), policies(), st.data())
def test_a_failed_machine_moves_its_instances_and_only_those(
    fleet: list[Machine], pols: list[Policy], data: st.DataObject
) -> None:
    first = place(pols, fleet)
    used = sorted({m for ms in first.machines.values() for m in ms})
    assume(used)
    failed = data.draw(st.sampled_from(used))
    again = place(pols, fleet, recorded=dict(first.machines), failed=frozenset({failed}))
    for p in pols:
        before, after = set(first.machines[p.service]), set(again.machines[p.service])
        assert failed not in after
        assert before - {failed} <= after, "an instance on a healthy machine moved"
        for name in before - after:
            assert again.reasons[f"{p.service}@{name}"].startswith(f"machine {failed} failed")
        for name in after - before:
            assert again.reasons[f"{p.service}@{name}"].startswith("placed by policy")


def test_what_no_longer_fits_moves_and_says_why() -> None:
    fleet = [
        Machine("a", {"zone": "eu"}, {"mem": 1000}, CONTAINERS),
        Machine("b", {"zone": "eu"}, {"mem": 1000}, CONTAINERS),
        Machine("c", {"zone": "us"}, {"mem": 1000}, CONTAINERS),
    ]
    api = Policy("api", "process", 2, "process", {"zone": "eu"}, requires={"mem": 600})
    first = place([api], fleet)
    assert first.machines == {"api": ("a", "b")}
    assert first.reasons["api@a"] == "placed by policy"
    # b leaves the zone: only its instance moves, to c once c is in the zone
    fleet[1] = replace(fleet[1], properties={"zone": "us"})
    fleet[2] = replace(fleet[2], properties={"zone": "eu"})
    again = place([api], fleet, recorded=first.machines)
    assert again.machines == {"api": ("a", "c")}
    assert again.reasons["api@b"] == "b does not match select; placed on c instead"
    assert again.reasons["api@c"] == "placed by policy; moved from b: b does not match select"
    # an explicit instance takes a's memory first: a's instance has to go, and with no
    # machine left in the zone with room, one replica is placed and the plan says so
    fixed = [Explicit("db", "a", {"mem": 500})]
    third = place([api], fleet, fixed, recorded=again.machines)
    assert third.machines == {"api": ("c",)}
    assert third.reasons["api@a"] == "a has no room for mem 600 (500 of 1000 used)"
    assert third.notes == (
        "api: 1 of 2 replicas placed; no other machine fits (a has no room for mem 600 "
        "(500 of 1000 used); b does not match select)",
    )


def test_new_instances_go_to_the_least_used_machine_then_the_name() -> None:
    fleet = [
        Machine("big", {}, {"mem": 8000}, CONTAINERS),
        Machine("small", {}, {"mem": 1000}, CONTAINERS),
        Machine("same", {}, {"mem": 8000}, CONTAINERS),
    ]
    web = Policy("web", "process", 2, "process", requires={"mem": 500})
    result = place([web], fleet, [Explicit("db", "big", {"mem": 4000})])
    # first: same (500/8000 used) before small (500/1000) and big (4500/8000);
    # second: small (0.5) before big (0.56)
    assert result.machines["web"] == ("same", "small")
    # without capacities, the name decides
    bare = [replace(m, capacity={}) for m in fleet]
    assert place([web], bare).machines["web"] == ("big", "same")
