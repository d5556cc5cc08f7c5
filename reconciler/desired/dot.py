"""The desired state as a Graphviz graph: machines as clusters, instances as nodes,
dependsOn solid, connectsTo dashed, activatesAfter dotted."""

from __future__ import annotations

from reconciler.desired.state import DesiredState

_EDGE_STYLE = {"dependsOn": "solid", "connectsTo": "dashed", "activatesAfter": "dotted"}


def _q(text: str) -> str:
    # names cannot hold quotes or backslashes (SPEC §2.2); labels use \\n on purpose
    return '"' + text.replace('"', '\\"') + '"'


def to_dot(desired: DesiredState) -> str:
    lines = [
        f"digraph {_q(desired.deployment)} {{",
        '  rankdir=LR; fontname="Helvetica";',
        '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    for name, m in sorted(desired.machines.items()):
        lines.append(f"  subgraph {_q('cluster_' + name)} {{")
        lines.append(f"    label={_q(f'{name} ({m.target_env}, {m.display_address})')};")
        lines.append('    style="rounded"; color="#7a8ba6";')
        for inst in sorted(desired.instances.values(), key=lambda i: i.key):
            if inst.machine == name:
                port = f":{inst.port}" if inst.port else ""
                label = f"{inst.service}{port}\\n{inst.type}"
                lines.append(f"    {_q(inst.key)} [label={_q(label)}];")
        lines.append("  }")
    placed: dict[str, list[str]] = {}
    for inst in desired.instances.values():
        placed.setdefault(inst.service, []).append(inst.machine)
    for inst in sorted(desired.instances.values(), key=lambda i: i.key):
        for kind, deps in (
            ("dependsOn", inst.depends_on),
            ("connectsTo", inst.connects_to),
            ("activatesAfter", inst.activates_after),
        ):
            for dep in deps:
                machines = placed.get(dep, [])
                # the instance it talks to: its own machine's first, as it receives them
                targets = [inst.machine] if inst.machine in machines else machines[:1]
                if kind == "activatesAfter":
                    targets = machines
                for target in targets:
                    lines.append(
                        f"  {_q(inst.key)} -> {_q(f'{dep}@{target}')} "
                        f"[style={_EDGE_STYLE[kind]}, label={_q(kind)}];"
                    )
    lines.append("}")
    return "\n".join(lines) + "\n"
