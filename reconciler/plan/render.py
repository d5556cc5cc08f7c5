"""Plan → text (coloured on a terminal), markdown (a pull-request comment), JSON."""

from __future__ import annotations

import json
from collections import defaultdict

from reconciler.plan.rollout import describe
from reconciler.plan.types import InstanceChange, Plan
from reconciler.text import human_bytes

_SIGN = {
    "activate": "+",
    "deactivate": "-",
    "replace": "~",
    "keep": "=",
    "create": "+",
    "add": "+",
    "update": "~",
    "destroy": "-",
    "remove": "-",
    "obsolete": "!",
    "lost": "!",  # on a failed machine: not touched (SPEC §10)
    "replace-machine": "±",
}
_COLOUR = {"+": "32", "-": "31", "~": "33", "!": "35", "±": "33", "=": "2"}


def summary_line(plan: Plan) -> str:
    s = plan.summary()
    if not plan.has_changes:
        return "No changes. The deployment matches the desired state."
    parts = []
    for key, words in (
        ("machinesToCreate", "machine{s} to create"),
        ("machinesToAdd", "machine{s} to add"),
        ("machinesToReplace", "machine{s} to replace"),
        ("machinesToDestroy", "machine{s} to destroy"),
    ):
        if s[key]:
            parts.append(f"{s[key]} {words.format(s='' if s[key] == 1 else 's')}")
    if s["pathsToTransfer"]:
        size = f" ({human_bytes(s['bytesToTransfer'])} known)" if s["bytesToTransfer"] else ""
        parts.append(
            f"{s['pathsToTransfer']} store path{'s' * (s['pathsToTransfer'] != 1)} "
            f"to transfer{size}"
        )
    parts.append(f"{s['toActivate']} to activate")
    parts.append(f"{s['toReplace']} to replace")
    parts.append(f"{s['toDeactivate']} to deactivate")
    if s["stateMoves"]:
        parts.append(f"{s['stateMoves']} state move{'s' * (s['stateMoves'] != 1)}")
    parts.append(f"{s['unchanged']} unchanged")
    if lost := plan.count("lost"):
        parts.append(f"{lost} lost on failed machines")
    return "Plan: " + ", ".join(parts) + "."


def _header(plan: Plan) -> str:
    at = plan.revision[:12] if plan.revision else "the work tree"
    base = (
        f"generation {plan.base_generation} ({(plan.base_revision or '')[:12]})"
        if plan.base_generation is not None
        else f"{plan.base_revision[:12]}"
        if plan.base_revision
        else "nothing deployed"
    )
    return f"Deployment {plan.deployment} at {at}, against {base}"


def render_text(plan: Plan, colour: bool = False, verbose: bool = False) -> str:
    def paint(sign: str, text: str) -> str:
        return f"\033[{_COLOUR.get(sign, '0')}m{text}\033[0m" if colour else text

    lines = [_header(plan), ""]
    for b in plan.blockers:
        lines.append(paint("-", f"Error: {b}"))
    for w in plan.warnings:
        lines.append(paint("!", f"Warning: {w}"))
    if plan.blockers or plan.warnings:
        lines.append("")
    changed_machines = [m for m in plan.machines if m.action != "keep"]
    if changed_machines:
        lines.append("Machines:")
        for m in changed_machines:
            sign = _SIGN.get(m.action, "~")
            why = f"  ({'; '.join(m.reasons)})" if m.reasons else ""
            addr = m.address or "(known after apply)"
            lines.append(
                paint(sign, f"  {sign} {m.name:<20} {m.action:<9} {m.target_env:<9} {addr}{why}")
            )
        lines.append("")
    by_machine: dict[str, list[InstanceChange]] = defaultdict(list)
    for c in plan.instances:
        by_machine[c.machine].append(c)
    transfers = {t.machine: t for t in plan.transfers}
    profiles = {p.machine: p for p in plan.profiles}
    for machine in sorted(set(by_machine) | set(transfers) | set(profiles)):
        changes = [c for c in by_machine[machine] if verbose or c.action != "keep"]
        kept = sum(1 for c in by_machine[machine] if c.action == "keep")
        t, p = transfers.get(machine), profiles.get(machine)
        if not changes and not t and not p:
            continue
        lines.append(f"{machine}:")
        if t:
            size = human_bytes(t.known_bytes) if t.known_bytes else ""
            unknown = f"{t.unknown} not built yet" if t.unknown else ""
            detail = ", ".join(x for x in (size, unknown) if x)
            lines.append(
                paint(
                    "+",
                    f"  + transfer {len(t.paths)} store path"
                    f"{'s' * (len(t.paths) != 1)}" + (f" ({detail})" if detail else ""),
                )
            )
            if verbose:
                lines.extend(f"      {path}" for path in t.paths)
        if p:
            lines.append(paint("~", f"  ~ profile [{', '.join(p.old)}] → [{', '.join(p.new)}]"))
        for c in changes:
            sign = _SIGN[c.action]
            why = f"  ({'; '.join(c.reasons)})" if c.reasons else ""
            lines.append(paint(sign, f"  {sign} {c.key:<40} {c.action}{why}"))
        if kept and not verbose:
            lines.append(paint("=", f"  = {kept} unchanged"))
        lines.append("")
    for mv in plan.moves:
        lines.append(paint("~", f"State of {mv.service} moves {mv.source} → {mv.target}"))
    if plan.moves:
        lines.append("")
    if plan.rollouts:
        lines.append("Rolling replacement:")
        lines.extend(paint("~", f"  {describe(r)}") for r in plan.rollouts)
        lines.append("")
    lines.append(summary_line(plan))
    return "\n".join(lines)


def render_markdown(plan: Plan) -> str:
    at = f"`{plan.revision[:12]}`" if plan.revision else "the work tree"
    out = [f"### Reconciler plan for deployment `{plan.deployment}` at {at}", ""]
    for b in plan.blockers:
        out.append(f"> [!CAUTION]\n> {b}\n")
    for w in plan.warnings:
        out.append(f"> [!WARNING]\n> {w}\n")
    out.append(f"**{summary_line(plan)}**")
    out.append("")
    if not plan.has_changes:
        return "\n".join(out) + "\n"
    out += ["<details><summary>Show details</summary>", ""]
    changed_machines = [m for m in plan.machines if m.action != "keep"]
    if changed_machines:
        out += [
            "#### Machines",
            "",
            "| | machine | action | env | address | why |",
            "|---|---|---|---|---|---|",
        ]
        for m in changed_machines:
            out.append(
                f"| {_SIGN.get(m.action, '~')} | `{m.name}` | {m.action} | {m.target_env} | "
                f"{m.address or '(known after apply)'} | {'; '.join(m.reasons)} |"
            )
        out.append("")
    if plan.transfers:
        out += ["#### Store paths to transfer", "", "| machine | paths | size |", "|---|---|---|"]
        for t in plan.transfers:
            size = human_bytes(t.known_bytes) if t.known_bytes else ""
            if t.unknown:
                size = f"{size} + {t.unknown} not built yet".strip(" +")
            out.append(f"| `{t.machine}` | {len(t.paths)} | {size} |")
        out.append("")
    if plan.profiles:
        out += ["#### Machine profiles", ""]
        out += [
            f"- `{p.machine}`: [{', '.join(p.old)}] → [{', '.join(p.new)}]" for p in plan.profiles
        ]
        out.append("")
    changes = [c for c in plan.instances if c.action != "keep"]
    if changes:
        out += ["#### Instances", "", "| | instance | action | why |", "|---|---|---|---|"]
        for c in changes:
            why = "; ".join(c.reasons).replace("|", "\\|")
            out.append(f"| {_SIGN[c.action]} | `{c.key}` | {c.action} | {why} |")
        out.append("")
    if plan.moves:
        out += ["#### State moves", ""]
        out += [f"- `{m.service}`: `{m.source}` → `{m.target}`" for m in plan.moves]
        out.append("")
    if plan.rollouts:
        out += ["#### Rolling replacement", ""]
        out += [f"- {describe(r)}" for r in plan.rollouts]
        out.append("")
    out += [
        "</details>",
        "",
        f"Apply: merge this pull request, or run `reconciler apply -d {plan.deployment}`.",
        "",
    ]
    return "\n".join(out)


def render_json(plan: Plan) -> str:
    return json.dumps(plan.to_json(), indent=2, sort_keys=False)
