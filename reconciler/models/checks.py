"""Cross-reference checks on a merged, schema-valid model: the bad inputs of SPEC §6
that no single key can see. Pure: model and marks in, problems out."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from reconciler.errors import Problem
from reconciler.models.graph import find_cycle
from reconciler.models.merge import locate
from reconciler.models.problems import dotted
from reconciler.models.schema import (
    ACTIVATION_TYPES,
    DistributionPolicy,
    MachineSpec,
    ModelDocument,
    ServiceSpec,
    env_prefix,
)
from reconciler.models.source import within_tree
from reconciler.models.yamlmarks import Marks

_ENV_FOR = {"ssh": "ssh", "local": "local", "container": "container", "ec2": "ec2"}
_SSH_USERS = {"ssh", "container", "ec2"}


class _Report:
    def __init__(self, marks: Marks, default_file: str) -> None:
        self.marks, self.default_file = marks, default_file
        self.problems: list[Problem] = []

    def add(self, path: tuple[str | int, ...], message: str) -> None:
        file, line = locate(self.marks, path) or (self.default_file, 0)
        self.problems.append(Problem(file, line, dotted(path), message))


def container_type(name: str, declared: str | None) -> str | None:
    return declared or (name if name in ACTIVATION_TYPES else None)


def matches_select(properties: Mapping[str, Any], select: Mapping[str, Any]) -> bool:
    """Every selected property equals the machine's (a boolean only equals a boolean)."""
    for key, want in select.items():
        have = properties.get(key)
        if have != want or isinstance(have, bool) != isinstance(want, bool):
            return False
    return True


def offers(machine: MachineSpec, container: str, service_type: str) -> bool:
    """Whether the machine has this container, of the service's type."""
    c = machine.containers.get(container)
    return c is not None and container_type(container, c.type) == service_type


def check_model(doc: ModelDocument, marks: Marks, default_file: str) -> list[Problem]:
    r = _Report(marks, default_file)
    for section in ("machines", "packages", "services"):
        _check_prefixes(r, section, getattr(doc, section))
    _check_machines(r, doc)
    _check_packages(r, doc)
    _check_services(r, doc)
    _check_distribution(r, doc)
    _check_policies(r, doc)
    _check_capacity(r, doc)
    return r.problems


def _check_prefixes(r: _Report, section: str, names: Iterable[str]) -> None:
    seen: dict[str, str] = {}
    for name in names:
        prefix = env_prefix(name)
        if prefix in seen:
            r.add(
                (section, name),
                f"name clashes with {seen[prefix]!r}: both become the environment-variable "
                f"prefix {prefix}; rename one of them",
            )
        else:
            seen[prefix] = name


def _check_machines(r: _Report, doc: ModelDocument) -> None:
    for name, m in doc.machines.items():
        d = m.deployment
        base = ("machines", name, "deployment")
        for block in ("local", "container", "ec2"):
            if getattr(d, block) is not None and d.targetEnv != block:
                r.add(
                    (*base, block),
                    f"the {block}: block does not belong on a machine with targetEnv "
                    f"{d.targetEnv}; remove it or set targetEnv: {block}",
                )
        if d.ssh is not None and d.targetEnv not in _SSH_USERS:
            r.add((*base, "ssh"), f"targetEnv {d.targetEnv} is not reached over SSH; remove ssh:")
        if d.targetEnv == "ssh" and (d.ssh is None or not d.ssh.host):
            r.add(
                (*base, "ssh") if d.ssh else (*base, "targetEnv"),
                "an ssh machine needs ssh: {host: …}, the existing host to reach",
            )
        if d.targetEnv == "ec2" and d.ec2 is None:
            r.add((*base, "targetEnv"), "an ec2 machine needs an ec2: block with region and ami")
        for i, pkg in enumerate(m.packages):
            if pkg not in doc.packages:
                r.add(("machines", name, "packages", i), _unknown("package", pkg, doc.packages))
        for cname, c in m.containers.items():
            if container_type(cname, c.type) is None:
                r.add(
                    ("machines", name, "containers", cname),
                    f"container {cname!r} needs a type: one of {', '.join(ACTIVATION_TYPES)}",
                )


def _check_packages(r: _Report, doc: ModelDocument) -> None:
    for name, p in doc.packages.items():
        if p.src is not None and within_tree(p.src) is None:
            r.add(
                ("packages", name, "src"),
                f"{p.src!r} is outside the models tree; use a relative folder inside it",
            )
        for i, dep in enumerate(p.deps):
            if dep not in doc.packages:
                r.add(("packages", name, "deps", i), _unknown("package", dep, doc.packages))
    cycle = find_cycle(
        {n: [d for d in p.deps if d in doc.packages] for n, p in doc.packages.items()}
    )
    if cycle:
        r.add(("packages", cycle[0], "deps"), f"dependency cycle: {' -> '.join(cycle)}")


def _check_services(r: _Report, doc: ModelDocument) -> None:
    for name, s in doc.services.items():
        base = ("services", name)
        if s.package not in doc.packages:
            r.add((*base, "package"), _unknown("package", s.package, doc.packages))
        if s.type == "process" and not s.command:
            r.add((*base, "type"), "a process service needs a command, relative to its package")
        if s.type != "process" and s.command:
            r.add((*base, "command"), f"command is only for process services, not {s.type}")
        if s.moveState and s.type not in ("process", "wrapper"):
            r.add(
                (*base, "moveState"),
                f"moveState is for process and wrapper services; a {s.type} "
                + ("moves its state anyway" if s.type == "sqlite-database" else "keeps none"),
            )
        hc = s.healthCheck
        if hc and (hc.http or hc.tcp) and s.port is None:
            r.add((*base, "healthCheck"), "an http or tcp health check needs the service's port")
        for field in ("dependsOn", "connectsTo", "activatesAfter"):
            for i, dep in enumerate(getattr(s, field)):
                if dep not in doc.services:
                    r.add((*base, field, i), _unknown("service", dep, doc.services))
                elif dep == name:
                    r.add((*base, field, i), f"a service cannot name itself in {field}")
        _check_env(r, name, s)
    order = {
        n: [d for d in (*s.dependsOn, *s.activatesAfter) if d in doc.services and d != n]
        for n, s in doc.services.items()
    }
    cycle = find_cycle(order)
    if cycle:
        field = "dependsOn" if cycle[1] in doc.services[cycle[0]].dependsOn else "activatesAfter"
        r.add(
            ("services", cycle[0], field),
            f"ordering cycle: {' -> '.join(cycle)}; break it, or use connectsTo "
            "(parameters without ordering) for one of the edges",
        )


def _check_env(r: _Report, name: str, s: ServiceSpec) -> None:
    generated = {"HOST", "PORT"}
    for dep in (*s.dependsOn, *s.connectsTo):
        p = env_prefix(dep)
        generated |= {f"{p}_HOST", f"{p}_PORT", f"{p}_URL", f"{p}_PATH", f"{p}_HOSTS"}
    for key in s.env:
        if key in generated or key.startswith("RECONCILER_"):
            r.add(
                ("services", name, "env", key),
                f"{key} clashes with a variable reconciler sets for the service; rename it",
            )


def _check_distribution(r: _Report, doc: ModelDocument) -> None:
    placed: dict[str, set[str]] = {}
    ports: dict[tuple[str, int], list[str]] = defaultdict(list)
    by_policy: set[str] = set()
    for svc, entries in doc.distribution.items():
        if svc not in doc.services:
            r.add(("distribution", svc), _unknown("service", svc, doc.services))
            continue
        s = doc.services[svc]
        placed[svc] = set()
        if isinstance(entries, DistributionPolicy):
            by_policy.add(svc)
            continue
        for i, e in enumerate(entries):
            path = ("distribution", svc, i)
            machine = doc.machines.get(e.target)
            if machine is None:
                r.add(path, _unknown("machine", e.target, doc.machines))
                continue
            if e.target in placed[svc]:
                r.add(path, f"{svc} is already distributed to {e.target}; list a machine once")
                continue
            placed[svc].add(e.target)
            cname = e.container or s.type
            c = machine.containers.get(cname)
            ctype = container_type(cname, c.type) if c else None
            if c is None or ctype != s.type:
                offered = sorted(machine.containers)
                r.add(
                    path,
                    f"machine {e.target} offers no {cname} container for {s.type} service {svc}"
                    f" (it offers: {', '.join(offered) or 'none'})",
                )
            if isinstance(s.port, int):
                ports[(e.target, s.port)].append(svc)
    for (host, port), svcs in sorted(ports.items()):
        if len(svcs) > 1:
            for svc in svcs:
                others = ", ".join(o for o in svcs if o != svc)
                r.add(("services", svc, "port"), f"port {port} on {host} is also used by {others}")
    for svc, machines in placed.items():
        s = doc.services[svc]
        for field in ("dependsOn", "connectsTo"):
            for i, dep in enumerate(getattr(s, field)):
                if dep not in doc.services:
                    continue
                if not placed.get(dep) and dep not in by_policy:
                    r.add(
                        ("services", svc, field, i),
                        f"{svc} needs {dep}, which is not deployed anywhere; "
                        f"add {dep} to the distribution",
                    )
                elif doc.services[dep].type != "sqlite-database" or svc in by_policy:
                    continue  # placement puts a policy's instances beside its databases
                elif dep in by_policy:
                    r.add(
                        ("services", svc, field, i),
                        f"sqlite-database {dep} is placed by policy, so {svc}'s machines cannot "
                        f"be sure to hold it; place {svc} by policy too, or list {dep}'s machines",
                    )
                else:
                    for m in sorted(machines - placed[dep]):
                        r.add(
                            ("services", svc, field, i),
                            f"sqlite-database {dep} is not on {m}, where {svc} runs; a SQLite "
                            f"database is only usable on its own machine (distribute {dep} to {m})",
                        )


def _check_policies(r: _Report, doc: ModelDocument) -> None:
    """What a policy asks must exist: a machine it selects, offering its container, with
    the property it spreads over."""
    for svc, policy in doc.distribution.items():
        if not isinstance(policy, DistributionPolicy) or svc not in doc.services:
            continue
        s = doc.services[svc]
        path = ("distribution", svc)
        selectable = {
            name: m
            for name, m in doc.machines.items()
            if matches_select(m.properties, policy.select)
        }
        if not selectable:
            wanted = ", ".join(f"{k}: {v!r}" for k, v in policy.select.items())
            r.add(
                (*path, "select"),
                f"no machine has the properties {{{wanted}}}; change select or a "
                "machine's properties",
            )
            continue
        cname = policy.container or s.type
        if not any(offers(m, cname, s.type) for m in selectable.values()):
            r.add(
                (*path, "container") if policy.container else path,
                f"no machine that select matches ({', '.join(sorted(selectable))}) offers a "
                f"{cname} container for {s.type} service {svc}",
            )
        if policy.spread is not None and not any(
            policy.spread in m.properties for m in selectable.values()
        ):
            # an error, not a warning: a misspelt spread would silently place without spreading
            r.add(
                (*path, "spread"),
                f"no machine that select matches has the property {policy.spread!r} to spread "
                "over; name a property those machines have, or remove spread",
            )


def _check_capacity(r: _Report, doc: ModelDocument) -> None:
    """Every required name has a capacity somewhere, and explicit instances fit theirs."""
    declared = {name for m in doc.machines.values() for name in m.capacity}
    for svc, s in doc.services.items():
        for name in s.requires:
            if name not in declared:
                r.add(
                    ("services", svc, "requires", name),
                    f"no machine has a capacity named {name!r}, so nothing would count it; "
                    f"add capacity: {{{name}: …}} to the machines or remove it",
                )
    used: dict[tuple[str, str], float] = defaultdict(float)
    for svc, entries in doc.distribution.items():
        if isinstance(entries, DistributionPolicy) or svc not in doc.services:
            continue
        for e in entries:
            for name, amount in doc.services[svc].requires.items():
                used[(e.target, name)] += amount
    for (machine, name), amount in sorted(used.items()):
        m = doc.machines.get(machine)
        if m is not None and name in m.capacity and amount > m.capacity[name]:
            r.add(
                ("machines", machine, "capacity", name),
                f"the services distributed to {machine} require {name} {amount:g}, more than "
                f"its capacity {m.capacity[name]:g}; raise it or distribute fewer there",
            )


def _unknown(kind: str, name: str, known: Mapping[str, object]) -> str:
    names = sorted(known)
    hint = f"; known: {', '.join(names[:12])}{' …' if len(names) > 12 else ''}" if names else ""
    return f"unknown {kind} {name!r}{hint}"
