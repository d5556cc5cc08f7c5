"""Step 1 of an attempt (SPEC §3): provision the machines reconciler makes itself
(`container`, `ec2`), several at once, each in a thread (the provisioners are
synchronous); and destroy them. Every provider call is recorded first (state/provisioning),
so a killed apply finds its machines again rather than making them twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from reconciler.desired.compile import provisioned_key
from reconciler.desired.state import DesiredMachine
from reconciler.options import Options
from reconciler.provision import Provisioned, provisioner_for
from reconciler.state import provisioning
from reconciler.state.db import open_db
from reconciler.state.machines import record_provisioned


@dataclass
class Provisioning:
    found: dict[str, Provisioned] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def reach(deployment: str, machine: str, target_env: str, p: Provisioned) -> dict[str, str]:
    """The allocations compile reads back: how to reach the machine, its private address."""
    ssh = {"host": p.ssh_host, "port": p.ssh_port, "user": p.ssh_user}
    ssh |= {k: v for k, v in (("identityFile", p.identity_file), ("hostKey", p.host_key)) if v}
    out = {provisioned_key(deployment, machine): json.dumps(ssh, sort_keys=True)}
    if target_env == "ec2" and p.address:
        out[f"ec2-address/{deployment}/{machine}"] = p.address
    return out


async def provision_all(
    opts: Options,
    deployment: str,
    machines: Iterable[DesiredMachine],
    container_subnet: str | None,
) -> Provisioning:
    recorder = provisioning.SqliteRecorder.open(opts.state_location, deployment)
    result = Provisioning()
    todo = list(machines)
    # one per environment: it keeps its clients and lookups across machines
    provisioners = {
        env: provisioner_for(env, opts.state_root, container_subnet=container_subnet)
        for env in {m.target_env for m in todo}
    }

    async def one(m: DesiredMachine) -> None:
        try:
            p = provisioners[m.target_env]
            result.found[m.name] = await asyncio.to_thread(p.ensure, deployment, m, recorder)
        except Exception as e:  # one machine's failure is reported with the others'
            result.errors[m.name] = str(e) or type(e).__name__

    try:
        await asyncio.gather(*(one(m) for m in todo))
    finally:
        recorder.close()
    db = open_db(opts.state_location, write=True)
    assert db is not None
    for m in todo:
        if m.name in result.found:
            p = result.found[m.name]
            record_provisioned(
                db,
                deployment,
                m.name,
                m.target_env,
                m.provider,
                asdict(p),
                reach(deployment, m.name, m.target_env, p),
            )
    return result


async def destroy_all(
    opts: Options, deployment: str, machines: Iterable[tuple[str, str, str | None]]
) -> dict[str, str]:
    """Destroy (name, target_env, provider_id) machines; errors by machine name."""
    recorder = provisioning.SqliteRecorder.open(opts.state_location, deployment)
    errors: dict[str, str] = {}
    todo = list(machines)
    provisioners = {env: provisioner_for(env, opts.state_root) for env in {m[1] for m in todo}}

    async def one(name: str, env: str, provider_id: str | None) -> None:
        try:
            p = provisioners[env]
            await asyncio.to_thread(p.destroy, deployment, name, provider_id, recorder)
        except Exception as e:
            errors[name] = str(e) or type(e).__name__

    try:
        await asyncio.gather(*(one(*m) for m in todo))
    finally:
        recorder.close()
    db = open_db(opts.state_location, write=True)
    assert db is not None
    for name, env, _ in todo:
        if name not in errors:
            gone = [provisioned_key(deployment, name), f"ec2-address/{deployment}/{name}"]
            record_provisioned(db, deployment, name, env, {}, None, dict.fromkeys(gone, ""))
    return errors


def interrupted_creates(
    opts: Options, deployment: str, known: set[str]
) -> list[tuple[str, str, None]]:
    """Creates a killed process left without a recorded machine, as `destroy_all` takes
    them: found again by their token, since no provider id was recorded."""
    found = provisioning.interrupted_creates(opts.state_location, deployment, known)
    return [(m, env, None) for m, env in found]
