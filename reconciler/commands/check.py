"""`reconciler check`: observe the machines like `status` does and report every way they
drifted from the record — unreachable machines, dead, missing or drifted instances,
another generation than recorded, recorded store paths gone. Exit 0 none, 2 drift."""

from __future__ import annotations

import json
from typing import Any

from reconciler.commands.status import load_record, nothing_recorded
from reconciler.execute.observe import InstanceSeen, Observation, observe
from reconciler.options import Options

EXIT_DRIFT = 2


def run(opts: Options) -> int:
    db, name, record = load_record(opts)
    items: list[dict[str, Any]] = []
    if record is not None and db is not None:
        items = drift(observe(db, record, opts.state_root, paths=True))
    if opts.format == "json":
        print(json.dumps({"deployment": name, "drift": bool(items), "items": items}, indent=2))
    elif record is None:
        print(nothing_recorded(opts, name))
    elif not items:
        print("No drift.")
    else:
        for item in items:
            print(item["message"])
    return EXIT_DRIFT if items else 0


def drift(obs: Observation) -> list[dict[str, Any]]:
    """One item per thing that differs from the record, by machine, in a stable order."""
    items: list[dict[str, Any]] = []
    record = obs.record
    generation = record.generation.generation if record.generation else None
    instances: dict[str, list[InstanceSeen]] = {}
    for inst in obs.instances:
        instances.setdefault(inst.row.machine, []).append(inst)
    for m in record.machines:
        seen = obs.machines[m.name]
        if not seen.reachable:
            items.append(_item("unreachable", m.name, f"{m.name}: unreachable: {seen.error}"))
            continue
        if seen.instances is None or seen.manifest is None:
            items.append(_item("unobserved", m.name, f"{m.name}: cannot observe: {seen.error}"))
        if generation is not None and seen.manifest is not None:
            found = seen.generation
            if found != generation:
                has = f"generation {found}" if found is not None else "no manifest"
                items.append(
                    _item(
                        "generation",
                        m.name,
                        f"{m.name}: has {has}; the record says generation {generation}",
                    )
                )
        for inst in instances.get(m.name, []):
            key = inst.row.key
            if inst.state == "dead":
                pid = f" (pid {inst.pid})" if inst.pid else ""
                items.append(_item("dead", m.name, f"{key}: dead{pid}", instance=key))
            elif inst.state == "missing":
                items.append(_item("missing", m.name, f"{key}: missing", instance=key))
            elif inst.state == "drifted":
                items.append(
                    _item(
                        "drifted",
                        m.name,
                        f"{key}: runs identity {inst.identity}, the record says "
                        f"{inst.row.identity}",
                        instance=key,
                    )
                )
        if seen.present is not None:
            for path in sorted(set(record.paths.get(m.name, {})) - seen.present):
                items.append(
                    _item(
                        "missing-path",
                        m.name,
                        f"{m.name}: store path {path} is missing",
                        path=path,
                    )
                )
    return items


def _item(
    kind: str, machine: str, message: str, instance: str | None = None, path: str | None = None
) -> dict[str, Any]:
    return {
        "kind": kind,
        "machine": machine,
        "instance": instance,
        "path": path,
        "message": message,
    }
