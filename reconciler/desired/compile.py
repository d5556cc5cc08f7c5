"""Compile a loaded deployment into its desired state. Pure: no I/O, no repository code.

Package store hashes follow package deps; instance identities follow `dependsOn`
through service digests (SPEC §2.5), so a change cascades to exactly its dependents.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from reconciler import BUILDER_VERSION
from reconciler.desired.allocate import (
    AllocationError,
    allocate_container_addresses,
    allocate_local_addresses,
    allocate_ports,
)
from reconciler.desired.placement import Explicit, Machine, Placement, Policy, place
from reconciler.desired.state import (
    PROVISIONED_ENVS,
    STATEFUL_TYPES,
    DesiredInstance,
    DesiredMachine,
    DesiredState,
    Received,
    RolloutPolicy,
    StorePackage,
    canonical_json,
    location_of,
    sha256_hex,
)
from reconciler.errors import InvalidModels, Problem
from reconciler.models.checks import container_type
from reconciler.models.graph import topological_order
from reconciler.models.keys import version_key, versions_for
from reconciler.models.load import LoadedDeployment
from reconciler.models.merge import locate
from reconciler.models.schema import DistributionPolicy, ModelDocument, SshSettings

_SHORT = 48  # input values up to this long are shown as they are; longer ones as a hash


def compile_deployment(
    loaded: LoadedDeployment,
    recorded_allocations: Mapping[str, str] | None = None,
    host_taken: Collection[str] = (),
    *,
    failed_machines: frozenset[str] = frozenset(),
) -> DesiredState:
    """`host_taken`: local addresses the rest of the host uses, never handed out anew.
    `failed_machines`: machines left out of placement by policy (SPEC §10 failover)."""
    recorded = recorded_allocations or {}
    doc = loaded.model
    packages = compile_packages(doc, loaded.src_trees)
    allocations: dict[str, str] = {}
    addresses = _machine_addresses(loaded, recorded, allocations, host_taken)
    by_policy = _policy_placement(loaded, recorded, failed_machines)
    for svc, placed in by_policy.machines.items():
        allocations[placement_key(loaded.name, svc)] = canonical_json(list(placed))
    if kept := _kept_snapshots(loaded, by_policy):
        allocations[snapshots_key(loaded.name)] = canonical_json(kept)
    placements = _placements(doc, by_policy)
    ports = _ports(loaded, placements, recorded, allocations)
    locations = {
        name: location_of(m.deployment.targetEnv, m.deployment.stateDir, m.deployment.ssh)
        for name, m in doc.machines.items()
    }
    keys = _machine_keys(loaded, recorded, allocations)
    instances, digests = _instances(doc, packages, addresses, locations, placements, ports, keys)
    deployed = {svc for svc, _, _ in placements}
    order = {
        svc: tuple(sorted(d for d in (*s.dependsOn, *s.activatesAfter) if d in deployed))
        for svc, s in doc.services.items()
        if svc in deployed
    }
    reached = _provisioned_ssh(loaded, recorded, allocations)
    machines = _machines(doc, packages, addresses, instances, reached)
    return DesiredState(
        deployment=loaded.name,
        revision=loaded.revision,
        packages=packages,
        machines=machines,
        instances=instances,
        service_order=order,
        digests=digests,
        allocations=allocations,
        rollouts={
            svc: RolloutPolicy(s.rollout.maxUnavailable, s.rollout.minReady)
            for svc, s in doc.services.items()
            if svc in deployed
        },
        move_state=frozenset(s for s, spec in doc.services.items() if spec.moveState),
        placed_by_policy=frozenset(
            f"{svc}@{m}" for svc, machines in by_policy.machines.items() for m in machines
        ),
        placement_reasons=by_policy.reasons,
        notes=by_policy.notes,
        blockers=by_policy.blockers,
        failed_machines=failed_machines,
    )


def package_hash(name: str, src_tree: str | None, build: str | None, dep_hashes: list[str]) -> str:
    doc = {
        "name": name,
        "srcTree": src_tree,
        "build": build,
        "deps": sorted(dep_hashes),
        "builderVersion": BUILDER_VERSION,
    }
    return sha256_hex(canonical_json(doc))[:32]


def compile_packages(
    doc: ModelDocument, src_trees: Mapping[str, str | None]
) -> dict[str, StorePackage]:
    deps = {n: p.deps for n, p in doc.packages.items()}
    out: dict[str, StorePackage] = {}
    for name in topological_order(doc.packages, deps):
        spec = doc.packages[name]
        dep_pkgs = [out[d] for d in spec.deps]
        h = package_hash(name, src_trees.get(name), spec.build, [d.hash for d in dep_pkgs])
        closure = {f"{h}-{name}"}
        for d in dep_pkgs:
            closure.update(d.closure)
        out[name] = StorePackage(
            name=name,
            hash=h,
            src=spec.src,
            src_tree=src_trees.get(name),
            build=spec.build,
            deps=tuple(spec.deps),
            closure=tuple(sorted(closure)),
        )
    return out


def unaddressed_local_machines(loaded: LoadedDeployment) -> list[str]:
    """Local machines whose address is allocated (not given in the model)."""
    return [
        name
        for name, m in loaded.model.machines.items()
        if m.deployment.targetEnv == "local" and m.deployment.address is None
    ]


def _machine_addresses(
    loaded: LoadedDeployment,
    recorded: Mapping[str, str],
    allocations: dict[str, str],
    host_taken: Collection[str],
) -> dict[str, str | None]:
    doc = loaded.model
    by_env: dict[str, list[str]] = {}
    for name, m in doc.machines.items():
        if m.deployment.address is None:
            by_env.setdefault(m.deployment.targetEnv, []).append(name)
    if by_env.get("local"):
        local = allocate_local_addresses(loaded.name, by_env["local"], recorded, host_taken)
        allocations.update(local)
    if by_env.get("container"):
        allocations.update(allocate_container_addresses(loaded.name, by_env["container"], recorded))
    out: dict[str, str | None] = {}
    for name, m in doc.machines.items():
        d = m.deployment
        if d.address is not None:
            out[name] = d.address
        elif d.targetEnv == "ssh":
            out[name] = d.ssh.host if d.ssh else None
        elif d.targetEnv == "local":
            out[name] = allocations[f"local-address/{loaded.name}/{name}"]
        elif d.targetEnv == "container":
            out[name] = allocations[f"container-address/{loaded.name}/{name}"]
        else:  # ec2: the private address, once provisioning recorded it
            out[name] = recorded.get(f"ec2-address/{loaded.name}/{name}")
            if out[name]:
                allocations[f"ec2-address/{loaded.name}/{name}"] = str(out[name])
    return out


# (service, machine, container) in distribution order
Located = tuple[str, str, str]


def placement_key(deployment: str, service: str) -> str:
    """Where the machines a policy placed a service on are recorded, among the
    allocations: kept with every generation and read back by the next compile."""
    return f"placement/{deployment}/{service}"


def snapshots_key(deployment: str) -> str:
    """Where the instances whose latest snapshot the controller keeps are recorded, among
    the allocations (SPEC §10 `failover: {stateful: latest-snapshot}`)."""
    return f"failover-snapshots/{deployment}"


def _kept_snapshots(loaded: LoadedDeployment, by_policy: Placement) -> list[str]:
    """The stateful instances placed by policy, when they fail over from a snapshot."""
    failover = loaded.config.failover
    if failover is None or failover.stateful != "latest-snapshot":
        return []
    services = loaded.model.services
    return [
        f"{svc}@{m}"
        for svc, placed in sorted(by_policy.machines.items())
        if services[svc].type in STATEFUL_TYPES or services[svc].moveState
        for m in placed
    ]


def _placements(doc: ModelDocument, by_policy: Placement) -> list[Located]:
    out: list[Located] = []
    for svc, entry in doc.distribution.items():
        if isinstance(entry, DistributionPolicy):
            container = entry.container or doc.services[svc].type
            out += [(svc, m, container) for m in by_policy.machines[svc]]
        else:
            out += [(svc, e.target, e.container or doc.services[svc].type) for e in entry]
    return out


def _policy_placement(
    loaded: LoadedDeployment, recorded: Mapping[str, str], failed: frozenset[str]
) -> Placement:
    doc = loaded.model
    failover = loaded.config.failover
    from_snapshot = failover is not None and failover.stateful == "latest-snapshot"
    machines = [
        Machine(
            name,
            m.properties,
            m.capacity,
            {c: container_type(c, spec.type) or "" for c, spec in m.containers.items()},
        )
        for name, m in doc.machines.items()
    ]
    explicit: list[Explicit] = []
    policies: list[Policy] = []
    last: dict[str, list[str]] = {}
    for svc, entry in doc.distribution.items():
        s = doc.services[svc]
        port = s.port if isinstance(s.port, int) else None
        if not isinstance(entry, DistributionPolicy):
            explicit += [Explicit(svc, e.target, s.requires, port) for e in entry]
            continue
        uses = (*s.dependsOn, *s.connectsTo)
        policies.append(
            Policy(
                service=svc,
                service_type=s.type,
                replicas=entry.replicas,
                container=entry.container or s.type,
                select=entry.select,
                spread=entry.spread,
                requires=s.requires,
                port=port,
                beside=tuple(
                    d
                    for d in uses
                    if d in doc.distribution and doc.services[d].type == "sqlite-database"
                ),
                stays_on_failed=(s.type in STATEFUL_TYPES or s.moveState) and not from_snapshot,
            )
        )
        value = recorded.get(placement_key(loaded.name, svc))
        if value is not None:
            last[svc] = json.loads(value)
    return place(policies, machines, explicit, last, failed)


def _ports(
    loaded: LoadedDeployment,
    placements: list[Located],
    recorded: Mapping[str, str],
    allocations: dict[str, str],
) -> dict[str, int]:
    doc = loaded.model
    wanted: dict[str, tuple[str, int | str | None, tuple[int, int] | None]] = {}
    for svc, machine, container in placements:
        spec = doc.services[svc]
        if spec.port is not None:
            prange = doc.machines[machine].containers[container].portRange
            wanted[f"{svc}@{machine}"] = (machine, spec.port, prange)
    try:
        ports = allocate_ports(loaded.name, wanted, recorded)
    except AllocationError as e:
        svc = e.key.split("@")[0]
        file, line = locate(loaded.marks, ("services", svc, "port")) or ("", 0)
        raise InvalidModels([Problem(file, line, f"services.{svc}.port", str(e))]) from None
    for key, port in ports.items():
        if doc.services[key.split("@")[0]].port == "auto":
            allocations[f"port/{loaded.name}/{key}"] = str(port)
    return ports


def _instances(
    doc: ModelDocument,
    packages: dict[str, StorePackage],
    addresses: Mapping[str, str | None],
    machine_locations: Mapping[str, str],
    placements: list[Located],
    ports: Mapping[str, int],
    machine_keys: Mapping[str, dict[str, Any]],
) -> tuple[dict[str, DesiredInstance], dict[str, str]]:
    by_service: dict[str, list[Located]] = {}
    for p in placements:
        by_service.setdefault(p[0], []).append(p)
    deps_only = {s: doc.services[s].dependsOn for s in by_service}
    received_cache: dict[tuple[str, str], Received] = {}

    def receives(dep: str, machine: str) -> Received:
        cached = received_cache.get((dep, machine))
        if cached:
            return cached
        places = sorted(by_service.get(dep, []), key=lambda p: p[1] != machine)  # own first
        if not places:  # a policy that placed nothing: the plan is blocked
            return Received("(not placed)", None, None, ())
        dep_type = doc.services[dep].type
        hosts = []
        for _, m, _ in places:
            host = addresses[m] or "(known after apply)"
            port = ports.get(f"{dep}@{m}")
            hosts.append(f"{host}:{port}" if port else host)
        first = places[0][1]
        r = Received(
            host=addresses[first] or "(known after apply)",
            port=ports.get(f"{dep}@{first}"),
            path=f"state/{dep}/{dep}.sqlite" if dep_type == "sqlite-database" else None,
            hosts=tuple(hosts),
        )
        received_cache[(dep, machine)] = r
        return r

    instances: dict[str, DesiredInstance] = {}
    digests: dict[str, str] = {}
    for svc in topological_order(by_service, deps_only):
        spec = doc.services[svc]
        pkg = packages[spec.package]
        identities = []
        for _, machine, container in by_service[svc]:
            key = f"{svc}@{machine}"
            got = {d: receives(d, machine) for d in (*spec.dependsOn, *spec.connectsTo)}
            c = doc.machines[machine].containers[container]
            container_settings = {
                "name": container,
                "type": container_type(container, c.type),
                "portRange": list(c.portRange) if c.portRange else None,
                "properties": c.properties,
            }
            parts: dict[str, Any] = {
                "service": svc,
                "type": spec.type,
                "package": pkg.hash,
                "command": spec.command,
                "user": spec.user,
                "port": ports.get(key),
                "env": spec.env,
                "address": addresses[machine],
                "location": machine_locations[machine],
                "machineProperties": doc.machines[machine].properties,
                "properties": spec.properties,
                "container": container_settings,
                # the digest, and what this instance is told (own machine's first, order)
                "dependsOn": {
                    d: {"digest": digests[d], "receives": got[d].as_dict()} for d in spec.dependsOn
                },
                "connectsTo": {d: got[d].as_dict() for d in spec.connectsTo},
            }
            if machine_keys.get(machine):  # only then: identities without keys stay as they were
                parts["keys"] = machine_keys[machine]
            identity = sha256_hex(canonical_json(parts))
            identities.append(identity)
            instances[key] = DesiredInstance(
                key=key,
                service=svc,
                machine=machine,
                container=container,
                type=spec.type,
                package=spec.package,
                package_path=pkg.path,
                command=spec.command,
                user=spec.user,
                port=ports.get(key),
                env=dict(spec.env),
                health=spec.healthCheck,
                depends_on=tuple(spec.dependsOn),
                connects_to=tuple(spec.connectsTo),
                activates_after=tuple(spec.activatesAfter),
                receives=got,
                properties=dict(spec.properties),
                identity=identity,
                inputs=identity_inputs(parts, pkg.path),
            )
        digests[svc] = sha256_hex("\n".join(sorted(identities)))
    return instances, digests


def identity_inputs(parts: Mapping[str, Any], package_path: str) -> dict[str, str]:
    """One short, comparable value per identity input: the plan says which one changed."""
    out: dict[str, str] = {"package": package_path}
    for name in (
        "type",
        "command",
        "user",
        "port",
        "address",
        "location",
        "machineProperties",
        "env",
        "properties",
        "container",
    ):
        out[name] = _short(parts[name])
    for dep, values in parts["dependsOn"].items():
        out[f"dependsOn:{dep}"] = _short(values)
    for dep, values in parts["connectsTo"].items():
        out[f"connectsTo:{dep}"] = _short(values)
    for name, values in parts.get("keys", {}).items():
        out[f"key:{name}"] = _short(values)
    return out


def _machine_keys(
    loaded: LoadedDeployment, recorded: Mapping[str, str], allocations: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Per machine, each key's source and version: what the instances on it are given, so
    adding or changing a key (re)starts them. Versions known here are kept as allocations."""
    out: dict[str, dict[str, Any]] = {}
    for machine, m in loaded.model.machines.items():
        specs = m.deployment.keys
        versions = versions_for(loaded.key_versions, recorded, loaded.name, machine, list(specs))
        out[machine] = {}
        for name, version in versions.items():
            spec = specs[name]
            if version is not None:
                allocations[version_key(loaded.name, machine, name)] = version
            out[machine][name] = {
                "source": f"env:{spec.env}" if spec.env is not None else f"file:{spec.file}",
                "permissions": spec.permissions,
                "user": spec.user,
                "version": version,
            }
    return out


def provisioned_key(deployment: str, machine: str) -> str:
    return f"ssh-endpoint/{deployment}/{machine}"


def _provisioned_ssh(
    loaded: LoadedDeployment, recorded: Mapping[str, str], allocations: dict[str, str]
) -> dict[str, SshSettings]:
    """How provisioned machines are reached, as provisioning recorded it (host, port, key
    it generated or read); what the model's `ssh:` sets (user, identityFile, a pinned
    hostKey) wins."""
    out = {}
    for name, m in loaded.model.machines.items():
        key = provisioned_key(loaded.name, name)
        if m.deployment.targetEnv not in PROVISIONED_ENVS or key not in recorded:
            continue
        allocations[key] = recorded[key]
        found = json.loads(recorded[key])
        given = m.deployment.ssh.model_dump(exclude_unset=True) if m.deployment.ssh else {}
        out[name] = SshSettings(**{**found, **given, "host": found.get("host")})
    return out


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else canonical_json(value)
    return text if len(text) <= _SHORT else "sha256:" + sha256_hex(text)[:12]


def _machines(
    doc: ModelDocument,
    packages: Mapping[str, StorePackage],
    addresses: Mapping[str, str | None],
    instances: Mapping[str, DesiredInstance],
    reached: Mapping[str, SshSettings],
) -> dict[str, DesiredMachine]:
    needed: dict[str, set[str]] = {name: set() for name in doc.machines}
    for inst in instances.values():
        needed[inst.machine].update(packages[inst.package].closure)
    out = {}
    for name, m in doc.machines.items():
        d = m.deployment
        for pkg in m.packages:
            needed[name].update(packages[pkg].closure)
        provider = d.ec2.model_dump() if d.ec2 else d.container.model_dump() if d.container else {}
        out[name] = DesiredMachine(
            name=name,
            target_env=d.targetEnv,
            address=addresses[name],
            ssh=reached.get(name, d.ssh),
            state_dir=d.stateDir,
            max_parallel=d.maxParallel,
            compression=d.compression,
            profile=tuple(m.packages),
            keys=dict(d.keys),
            properties=dict(m.properties),
            provider=provider,
            closure=tuple(sorted(needed[name])),
        )
    return out
