"""Ordering graphs: topological layers and cycle finding, on plain name → names maps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def find_cycle(edges: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle as [a, b, …, a] if `edges` (node → nodes it comes after) has one."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for start in sorted(edges):
        if state.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(edges.get(start, ())))]
        state[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                state[node] = 2
                stack.pop()
                continue
            nxt = todo.pop(0)
            if state.get(nxt) == 1:
                path = [n for n, _ in stack]
                return [*path[path.index(nxt) :], nxt]
            if not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, sorted(edges.get(nxt, ()))))
    return None


def topological_order(nodes: Iterable[str], after: Mapping[str, Iterable[str]]) -> list[str]:
    """Nodes so that each comes after everything it depends on; ties in name order.

    Edges to nodes outside `nodes` are ignored. The graph must be acyclic.
    """
    wanted = set(nodes)
    indegree = {n: 0 for n in wanted}
    dependents: dict[str, list[str]] = {n: [] for n in wanted}
    for n in wanted:
        for dep in set(after.get(n, ())):
            if dep in wanted and dep != n:
                indegree[n] += 1
                dependents[dep].append(n)
    ready = sorted(n for n, d in indegree.items() if d == 0)
    order: list[str] = []
    while ready:
        layer, ready = ready, []
        for n in layer:
            order.append(n)
            for m in dependents[n]:
                indegree[m] -= 1
                if indegree[m] == 0:
                    ready.append(m)
        ready.sort()
    if len(order) != len(wanted):
        raise ValueError("ordering graph has a cycle")
    return order
