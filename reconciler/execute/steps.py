"""The steps of an attempt (SPEC §3), in order: settle what a killed attempt left,
provision, build, transfer, then lease every machine and transition, and record — or,
for `destroy`, take everything down and record that. Each reads and extends the
`Attempt` and says whether to go on, plan again, or stop there; one that cannot go on
raises `Failed` or `Stalled` (execute/outcome.py)."""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from reconciler.desired.state import PROVISIONED_ENVS, DesiredState
from reconciler.execute.agent_client import ship
from reconciler.execute.inputs import compile_with_record
from reconciler.execute.outcome import (
    Failed,
    Outcome,
    Reason,
    Result,
    Stalled,
)
from reconciler.execute.recover import settle
from reconciler.execute.requests import deployment_dir
from reconciler.execute.secrets import Secrets, read_secrets
from reconciler.execute.transfer import MachineTransfer, Progress, TransferFailed, transfer_all
from reconciler.execute.transition import Transition, run_transition
from reconciler.models.load import LoadedDeployment
from reconciler.options import Options
from reconciler.plan.diff import make_plan
from reconciler.plan.types import Plan
from reconciler.state.attempts import (
    finish_attempt,
    next_generation,
    record_generation,
    set_reason,
    start_attempt,
)
from reconciler.state.db import StateDB
from reconciler.state.hostkeys import RecordedHostKeys
from reconciler.state.journal import Journal
from reconciler.state.locks import Lease
from reconciler.state.machines import (
    forget_machines,
    record_store_paths,
    record_transfer,
)
from reconciler.state.recorded import RecordedState
from reconciler.state.rows import recorded_requests, unsettled
from reconciler.store.build import BuildError, build_missing
from reconciler.store.local import LocalStore, PathInfo
from reconciler.targets.base import Target
from reconciler.targets.open import open_target
from reconciler.text import plural

REASON_ENV = "RECONCILER_ATTEMPT_REASON"  # why the controller started this attempt


class Next(Enum):
    """What a step says when it ends well."""

    GO_ON = "go on"
    REPLAN = "plan again"  # what the step did changes the plan (provisioned addresses)
    STOP = "stop here"  # done as far as asked (--provision-only, --copy-only, no changes)


Step = Callable[["Attempt"], Awaitable[Next]]


@dataclass(frozen=True)
class AttemptOptions:
    scope: list[str] | None = None  # --only: these machines (with --copy/--provision-only)
    max_concurrent: int = 10
    copy_only: bool = False
    provision_only: bool = False
    kill_obsolete: bool = False
    allow_recreate: bool = False
    keep_machines: bool = False  # destroy: keep provisioned machines


@dataclass
class Attempt:
    """Everything one attempt knows; each step reads and extends it."""

    opts: Options
    options: AttemptOptions
    say: Callable[[str], None]  # a line for the person watching (stderr), also under -q
    progress: Callable[[], AbstractContextManager[Progress]]
    loaded: LoadedDeployment | None  # None: destroy
    desired: DesiredState
    recorded: RecordedState
    plan: Plan
    db: StateDB
    store: LocalStore
    agent: PathInfo
    targets: dict[str, Target] = field(default_factory=dict)
    attempt: str | None = None  # its id, once recorded
    infos: dict[str, PathInfo] = field(default_factory=dict)
    built: list[str] = field(default_factory=list)
    sent: dict[str, MachineTransfer] = field(default_factory=dict)
    secrets: Secrets = field(default_factory=dict)
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    half_made: list[tuple[str, str, str | None]] = field(default_factory=list)  # destroy
    fences: list[Lease] = field(default_factory=list)  # every write checks they still hold
    outcome: Outcome | None = None

    @property
    def state_root(self) -> Path:
        return self.opts.state_root

    @property
    def scope(self) -> list[str]:
        """The machines worked on: as asked, but never a failed one (SPEC §10)."""
        names = self.options.scope or sorted(self.desired.machines)
        return [m for m in names if m not in self.recorded.failed]

    def replan(self) -> None:
        assert self.loaded is not None
        self.desired, self.recorded = compile_with_record(self.opts, self.loaded)
        self.plan = plan_for(self.loaded, self.desired, self.recorded, self.options)

    def finish(self, status: str, reason: str) -> None:
        if self.attempt is not None:
            finish_attempt(self.db, self.attempt, status, reason, self.fences)

    def open_targets(self, include_removed: bool) -> None:
        keys = RecordedHostKeys(self.db)
        for name in self.scope:
            if name not in self.targets:
                connection = self.desired.machines[name].connection
                self.targets[name] = open_target(name, connection, self.state_root, keys)
        for name, have in self.recorded.machines.items():  # removed machines: to take down
            if include_removed and name not in self.targets and have.connection:
                if name in self.recorded.failed:
                    continue
                self.targets[name] = open_target(name, have.connection, self.state_root, keys)

    async def close_targets(self) -> None:
        await asyncio.gather(*(t.close() for t in self.targets.values()), return_exceptions=True)


def plan_for(
    loaded: LoadedDeployment, desired: DesiredState, recorded: RecordedState, o: AttemptOptions
) -> Plan:
    return make_plan(
        desired,
        recorded,
        destroy_machines=loaded.config.destroyMachines,
        kill_obsolete=o.kill_obsolete,
        allow_recreate=o.allow_recreate,
    )


# --- the steps --------------------------------------------------------------------------


async def settle_first(a: Attempt) -> Next:
    """What a killed apply left behind is settled before anything else."""
    if not unsettled(a.db, a.desired.deployment):
        return Next.GO_ON
    a.open_targets(include_removed=True)
    await ship(a.targets.values(), a.store, a.agent)
    for s in await settle(a.db, a.desired.deployment, a.targets, a.agent.path):
        what = {
            "failed": "it had changed nothing",
            "rolled_back": "rolled back",
            "stalled": "its rollback failed again",
        }[s.status]
        a.say(f"Settled an interrupted attempt ({s.attempt[:8]}): {what}.")
        for problem in s.problems:
            a.say(f"  {problem}")
        if s.status == "stalled":
            raise Stalled(
                Reason.ROLLBACK_FAILED,
                "Stalled: fix the machines named above, then apply again.",
                s.problems,
            )
    return Next.GO_ON


async def provision(a: Attempt) -> Next:
    """Step 1: replace what must be replaced (--allow-recreate), then create or find every
    provisioned machine in scope; plan again once their addresses are known."""
    from reconciler.execute.provision import destroy_all, provision_all

    if not any(m.target_env in PROVISIONED_ENVS for m in a.desired.machines.values()):
        return Next.STOP if a.options.provision_only else Next.GO_ON
    dep = a.desired.deployment
    replaced = [(c.name, c.target_env, None) for c in a.plan.machines if c.action == "replace"]
    if replaced:
        a.say(f"Destroying {', '.join(n for n, _, _ in replaced)} to replace them.")
        errors = await destroy_all(a.opts, dep, replaced)
        if errors:
            for name, error in sorted(errors.items()):
                a.say(f"{name}: destroy failed: {error}")
            raise Failed(Reason.PROVISION_FAILED, "could not replace " + ", ".join(sorted(errors)))
    wanted = [
        m
        for name, m in sorted(a.desired.machines.items())
        if m.target_env in PROVISIONED_ENVS and name in a.scope
    ]
    started = time.monotonic()
    done = await provision_all(a.opts, dep, wanted, a.desired.allocations.get("container-subnet"))
    for name, error in sorted(done.errors.items()):
        a.say(f"{name}: provisioning failed: {error}")
    if not a.opts.quiet and a.opts.format == "text":
        for name, p in sorted(done.found.items()):
            a.say(f"  {name:<20} {p.provider_id} {p.state} {p.address or ''}")
        if done.found:
            seconds = time.monotonic() - started
            a.say(f"{plural(len(done.found), 'machine')} provisioned or found in {seconds:.1f} s.")
    if done.errors:
        raise Failed(
            Reason.PROVISION_FAILED,
            "Nothing was deployed; the machines made so far are recorded.",
        )
    if a.options.provision_only:
        a.outcome = Outcome(Result.COPIED, Reason.PROVISIONED)
        return Next.STOP
    return Next.REPLAN


async def build(a: Attempt) -> Next:
    """Step 2: build the store paths the machines in scope lack, once per hash."""
    if a.options.provision_only:
        a.outcome = Outcome(Result.COPIED, Reason.PROVISIONED)
        return Next.STOP
    if not a.plan.has_changes and not a.options.copy_only:
        gen = a.recorded.generation
        assert a.loaded is not None
        message = f"No changes: generation {gen} already matches {a.loaded.label}."
        a.outcome = Outcome(Result.UNCHANGED, Reason.UNCHANGED, message, gen, a.recorded.revision)
        return Next.STOP
    assert a.loaded is not None
    if not a.options.copy_only:
        a.secrets = read_secrets(a.loaded, a.desired)
        a.attempt = start_attempt(a.db, a.desired, a.plan.to_json(), a.fences)
    needed = {p for m in a.scope for p in a.desired.machines[m].closure}
    try:
        a.infos, a.built = await build_missing(
            [p for p in a.desired.packages.values() if p.path in needed],
            a.loaded.git_dir,
            a.store,
        )
    except BuildError as e:
        a.finish("failed", str(e))
        raise Failed(Reason.BUILD_FAILED, str(e)) from None
    a.infos[a.agent.path] = a.agent
    record_store_paths(a.db, a.infos.values())
    if a.built and a.opts.format == "text" and not a.opts.quiet:
        a.say(f"Built {plural(len(a.built), 'package')}: {', '.join(a.built)}")
    return Next.GO_ON


async def transfer(a: Attempt) -> Next:
    """Step 3: send each machine in scope the closure paths it lacks."""
    a.open_targets(include_removed=not a.options.copy_only)
    started = time.monotonic()
    try:
        with a.progress() as progress:
            a.sent = await transfer_all(
                [a.desired.machines[m] for m in a.scope],
                a.targets,
                a.store,
                a.infos,
                a.options.max_concurrent,
                progress,
                extra=(a.agent.path,),
                alone=a.options.copy_only,
            )
    except TransferFailed as failed:
        record_transfer(a.db, a.desired, {m: r.present for m, r in failed.done.items()})
        for machine, error in sorted(failed.errors.items()):
            a.say(f"{machine}: transfer failed: {error}")
        a.finish("failed", f"transfer failed: {failed}")
        raise Failed(
            Reason.TRANSFER_FAILED,
            f"{plural(len(failed.errors), 'machine')} failed; nothing running was touched.",
        ) from None
    record_transfer(a.db, a.desired, {m: r.present for m, r in a.sent.items()})
    if a.options.copy_only:
        a.outcome = Outcome(
            Result.COPIED,
            Reason.COPIED,
            transferred_bytes=sum(r.wire_bytes for r in a.sent.values()),
            report={
                "seconds": time.monotonic() - started,
                "built": a.built,
                "transfers": {m: _as_json(r) for m, r in a.sent.items()},
            },
        )
        return Next.STOP
    return Next.GO_ON


async def transition(a: Attempt) -> Next:
    """Steps 4-6: lease every machine, switch, and on any failure roll back."""
    assert a.attempt is not None
    t = _transition(a, a.secrets)
    try:
        a.requests, warnings = await run_transition(t)
    except (Failed, Stalled) as e:
        a.finish("stalled" if isinstance(e, Stalled) else "rolled_back", e.message)
        raise
    for warning in warnings:
        a.say(f"warning: {warning}")
    return Next.GO_ON


async def record(a: Attempt) -> Next:
    """Step 7: the attempt becomes the next generation; obsolete provisioned machines go
    (destroyMachines or --kill-obsolete)."""
    from reconciler.execute.provision import destroy_all

    assert a.attempt is not None
    present = {m: r.present for m, r in a.sent.items()}
    number = record_generation(
        a.db, a.attempt, a.desired, present, a.requests, fences=a.fences, carried=a.plan.lost
    )
    why = os.environ.get(REASON_ENV)
    if why:  # e.g. "failover: m1 unreachable since …": history says why this generation
        set_reason(a.db, a.attempt, why)
    for key in a.plan.lost:
        a.say(f"warning: {key} is on a failed machine: left as it is (lost until it answers)")
    gone = [
        (c.name, c.target_env, a.recorded.machines[c.name].provider_id)
        for c in a.plan.machines
        if c.action == "destroy" and c.name in a.recorded.machines
    ]
    if gone:
        errors = await destroy_all(a.opts, a.recorded.deployment, gone)
        for name, _, _ in gone:
            if name in errors:
                a.say(f"warning: {name}: destroy failed: {errors[name]}")
            else:
                a.say(f"Destroyed machine {name}.")
    rev = a.desired.revision
    a.outcome = Outcome(
        Result.APPLIED,
        Reason.APPLIED,
        generation=number,
        revision=rev.sha if rev else None,
        transferred_bytes=sum(r.wire_bytes for r in a.sent.values()),
        endpoints=endpoints(a.desired),
    )
    return Next.GO_ON


async def take_down(a: Attempt) -> Next:
    """destroy: the transition to nothing, then the deployment's folders on each machine."""
    a.attempt = start_attempt(a.db, a.desired, a.plan.to_json(), a.fences)
    a.open_targets(include_removed=True)
    await ship(a.targets.values(), a.store, a.agent)
    await transition(a)
    for target in a.targets.values():
        folder = shlex.quote(deployment_dir(target.state_dir, a.desired.deployment))
        await target.check(
            f"rm -rf {folder}/profiles {folder}/current {folder}/manifest.json {folder}/instances"
        )
    return Next.GO_ON


async def record_destroyed(a: Attempt) -> Next:
    from reconciler.execute.provision import destroy_all

    assert a.attempt is not None
    name = a.desired.deployment
    number = record_generation(a.db, a.attempt, a.desired, {}, {}, fences=a.fences)
    provisioned: list[tuple[str, str, str | None]] = [
        (m.name, m.target_env, m.provider_id)
        for m in a.recorded.machines.values()
        if m.provider_id is not None
    ]
    provisioned += a.half_made
    destroyed: list[str] = []
    if provisioned and not a.options.keep_machines:
        errors = await destroy_all(a.opts, name, provisioned)
        for machine, error in sorted(errors.items()):
            a.say(f"{machine}: destroy failed: {error}")
        if errors:
            raise Failed(Reason.PROVISION_FAILED, "could not destroy " + ", ".join(sorted(errors)))
        forget_machines(a.db, name)
        destroyed = [m for m, _, _ in provisioned]
    a.outcome = Outcome(
        Result.APPLIED,
        Reason.DESTROYED,
        generation=number,
        details=destroyed,
        report={"deactivated": a.plan.deactivation_order},
    )
    return Next.GO_ON


# --- helpers ----------------------------------------------------------------------------


def _transition(a: Attempt, secrets: Secrets) -> Transition:
    assert a.attempt is not None
    return Transition(
        desired=a.desired,
        recorded=a.recorded,
        plan=a.plan,
        targets=a.targets,
        agent=a.agent.path,
        attempt=a.attempt,
        journal=Journal(a.db, a.attempt),
        generation=next_generation(a.db, a.desired.deployment),
        old_requests=recorded_requests(a.db, a.desired.deployment),
        secrets=secrets,
        say=a.say if a.opts.format == "text" and not a.opts.quiet else None,
    )


def endpoints(desired: DesiredState) -> dict[str, str]:
    """Where each process instance with a port answers."""
    return {
        key: f"http://{desired.machines[i.machine].address}:{i.port}"
        for key, i in sorted(desired.instances.items())
        if i.type == "process" and i.port is not None
    }


def _as_json(r: MachineTransfer) -> dict[str, Any]:
    return {
        "sent": r.sent,
        "size": r.size,
        "wireBytes": r.wire_bytes,
        "compression": r.compression,
        "seconds": round(r.seconds, 3),
    }
