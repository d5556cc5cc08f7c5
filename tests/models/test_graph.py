"""Ordering and cycle detection: every order respects its edges; every cycle is found."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.models.graph import find_cycle, topological_order


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    """Random DAGs: node i may only come after nodes with a smaller index."""
    n = draw(st.integers(min_value=1, max_value=12))
    names = [f"n{i:02d}" for i in range(n)]
    return {
        names[i]: draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
        for i in range(n)
    }


@given(dags())
def test_topological_order_puts_every_node_after_what_it_needs(after: dict[str, list[str]]) -> None:
    order = topological_order(after, after)
    assert sorted(order) == sorted(after)
    position = {n: i for i, n in enumerate(order)}
    for node, deps in after.items():
        for dep in deps:
            assert position[dep] < position[node]


@given(dags())
def test_a_dag_has_no_cycle(after: dict[str, list[str]]) -> None:
    assert find_cycle(after) is None


@given(dags(), st.data())
def test_a_back_edge_makes_a_cycle_that_is_reported(
    after: dict[str, list[str]], data: st.DataObject
) -> None:
    nodes = sorted(after)
    if len(nodes) < 2:
        after = {"a": ["a"]}
    else:
        low, high = sorted(
            data.draw(st.lists(st.sampled_from(nodes), min_size=2, max_size=2, unique=True))
        )
        after = {**after, low: [*after[low], high], high: [*after[high], low]}
    cycle = find_cycle(after)
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    for node, nxt in itertools.pairwise(cycle):
        assert nxt in after[node], (node, nxt, cycle)


def test_order_ignores_edges_to_nodes_outside_the_set() -> None:
    assert topological_order(["b", "c"], {"b": ["a"], "c": ["b"]}) == ["b", "c"]


def test_ties_go_in_name_order() -> None:
    assert topological_order(["z", "y", "x"], {}) == ["x", "y", "z"]


def test_ordering_a_cycle_is_refused() -> None:
    with pytest.raises(ValueError, match="cycle"):
        topological_order(["a", "b"], {"a": ["b"], "b": ["a"]})
