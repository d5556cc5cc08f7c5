"""An attempt (SPEC §3) as one pipeline: settle → provision → build → transfer → lock and
transition → record, each step returning whether to go on, plan again, or stop there,
or raising a typed error (`outcome.Failed`, `Stalled`). `apply`, `rollback` and the
controller's child run it towards the models at a commit; `destroy` runs it towards an
empty desired state. Whatever happens, it ends as one `Outcome`.

Nothing running is touched before the transition: a failure or an interruption before
it just stops; during it, the transition rolls back; once recording has begun it
finishes.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from reconciler.desired.host_addresses import claim
from reconciler.desired.state import PROVISIONED_ENVS, DesiredState
from reconciler.execute.agent_client import ensure_agent, ship
from reconciler.execute.inputs import compile_with_record, registry_owner
from reconciler.execute.outcome import (
    AttemptError,
    Failed,
    Outcome,
    Reason,
    Result,
    Stalled,
    Waiting,
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
from reconciler.state import locks
from reconciler.state.attempts import (
    finish_attempt,
    next_generation,
    record_generation,
    set_reason,
    start_attempt,
)
from reconciler.state.db import StateDB, open_db
from reconciler.state.hostkeys import RecordedHostKeys
from reconciler.state.journal import Journal
from reconciler.state.locks import Lease
from reconciler.state.machines import (
    forget_machines,
    record_store_paths,
    record_transfer,
    reserve_allocations,
)
from reconciler.state.recorded import RecordedState
from reconciler.state.rows import read_recorded, recorded_requests, unsettled
from reconciler.store.build import BuildError, build_missing
from reconciler.store.local import LocalStore, PathInfo
from reconciler.targets.base import Target
from reconciler.targets.open import open_target
from reconciler.text import plural

ATTEMPT_LEASE_SECONDS = 60.0  # renewed every third of it while the attempt runs
RESERVE_TRIES = 5
FENCE_ENV = "RECONCILER_FENCE"  # name=holder:token of a lease every write must still hold
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


# --- running it -----------------------------------------------------------------------


def apply_models(
    opts: Options,
    loaded: LoadedDeployment,
    options: AttemptOptions,
    say: Callable[[str], None],
    progress: Callable[[], AbstractContextManager[Progress]],
) -> Outcome:
    """Bring the deployment to the models `loaded` holds (`_apply_models`); busy when
    another attempt of it runs."""
    try:
        return _apply_models(opts, loaded, options, say, progress)
    except Waiting as e:
        return Outcome.of(e)


def _apply_models(
    opts: Options,
    loaded: LoadedDeployment,
    options: AttemptOptions,
    say: Callable[[str], None],
    progress: Callable[[], AbstractContextManager[Progress]],
) -> Outcome:
    """Bring the deployment to the models `loaded` holds. Takes the deployment's attempt
    lease and plans again under it: another apply may have run since the caller's plan.
    Applies of other deployments run meanwhile; their allocations cannot collide."""
    db = _writer(opts)
    try:
        with attempt_lease(db, loaded.name, "apply") as lease:
            desired, recorded = reserve(opts, loaded, db)
            store = LocalStore(opts.state_root / "store")
            a = Attempt(
                opts, options, say, progress, loaded, desired, recorded,
                plan_for(loaded, desired, recorded, options), db, store, ensure_agent(store),
                fences=[lease, *inherited_fence(db)],
            )  # fmt: skip
            steps: list[Step] = [provision, build, transfer, transition, record]
            if not options.copy_only:
                steps.insert(0, settle_first)
            return asyncio.run(_interruptible(a, steps))
    finally:
        db.close()


def destroy_deployment(
    opts: Options,
    name: str,
    options: AttemptOptions,
    say: Callable[[str], None],
    confirm: Callable[[RecordedState], bool],
) -> Outcome:
    """Take everything of a deployment down: the transition to an empty desired state,
    under the same leases and rollback; then its provisioned machines."""
    from reconciler.execute.provision import interrupted_creates

    db = _writer(opts)
    try:
        with attempt_lease(db, name, "destroy") as lease:
            recorded = read_recorded(db, name)
            half_made = interrupted_creates(opts, name, set(recorded.machines))
            if not recorded.instances and not recorded.machines and not half_made:
                return Outcome(
                    Result.UNCHANGED, Reason.UNCHANGED, f"Nothing of {name} is deployed."
                )
            if not confirm(recorded):
                return Outcome(Result.FAILED, Reason.DECLINED, "Nothing was changed.")
            empty = DesiredState(name, None, {}, {}, {}, {}, {})
            store = LocalStore(opts.state_root / "store")
            a = Attempt(
                opts, options, say, _no_progress, None, empty, recorded,
                make_plan(empty, recorded), db, store, ensure_agent(store), fences=[lease],
            )  # fmt: skip
            a.half_made = list(half_made)
            return asyncio.run(_interruptible(a, [take_down, record_destroyed]))
    finally:
        db.close()


@contextmanager
def attempt_lease(db: StateDB, deployment: str, what: str) -> Iterator[Lease]:
    """One attempt per deployment at a time, whoever starts it (a person, a controller
    replica's child); refused at once, naming the holder, when another holds it."""
    holder = f"{what} (pid {os.getpid()} on {socket.gethostname()})"
    name = locks.attempt_lease(deployment)
    lease = locks.claim(db, name, holder, ATTEMPT_LEASE_SECONDS)
    have = locks.current(db, name)
    if lease is None and have is not None and _died_here(have.holder):
        # killed on this host (kill -9, a crash): no need to wait for its lease to expire
        lease = locks.take_over(db, have, holder, ATTEMPT_LEASE_SECONDS)
    if lease is None:
        who = have.holder if have else "another process"
        raise Waiting(
            Reason.BUSY,
            f"deployment {deployment} is in use by {who}; wait for it to finish (one attempt "
            "per deployment at a time)",
            after=ATTEMPT_LEASE_SECONDS / 3,
        )
    try:
        yield lease
    finally:
        locks.release(db, lease)


def _died_here(holder: str) -> bool:
    """Whether a lease's holder was a process of this host that is gone."""
    found = re.search(r"\(pid (\d+) on ([^)]+)\)$", holder)
    if found is None or found.group(2) != socket.gethostname():
        return False
    try:
        state = Path(f"/proc/{found.group(1)}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def inherited_fence(db: StateDB) -> list[Lease]:
    """The controller replica's ownership of the deployment, when it started this apply:
    once another replica has taken it over, nothing more is recorded from here."""
    given = os.environ.get(FENCE_ENV, "")
    name, _, rest = given.partition("=")
    holder, _, token = rest.rpartition(":")
    if not (name and holder and token.isdigit()):
        return []
    return [Lease(name, holder, int(token), 0.0)]


def reserve(
    opts: Options, loaded: LoadedDeployment, db: StateDB
) -> tuple[DesiredState, RecordedState]:
    """Compile, and record the new allocations in one short transaction; when another
    deployment's apply took one of the values meanwhile, compile again around it."""
    for _ in range(RESERVE_TRIES):
        desired, recorded = compile_with_record(opts, loaded)
        if reserve_allocations(db, desired.deployment, desired.allocations):
            continue
        # and host-wide: another state DB on this host must not hand out the same address
        if not claim(registry_owner(opts), desired.deployment, desired.allocations):
            return desired, recorded
    raise Failed(Reason.ALLOCATION_RACE, "allocations kept colliding with concurrent applies")


async def _interruptible(a: Attempt, steps: list[Step]) -> Outcome:
    """SIGTERM and SIGINT cancel the attempt: before the transition it just stops, in
    it the transition rolls back."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    renewing = asyncio.create_task(_renew(a, task))
    try:
        for step in steps:
            got = await step(a)
            if got is Next.REPLAN:
                a.replan()
            elif got is Next.STOP:
                break
        assert a.outcome is not None
        return a.outcome
    except asyncio.CancelledError:
        a.finish("failed", "interrupted before any machine was changed")
        return Outcome(
            Result.FAILED, Reason.INTERRUPTED, "Interrupted before anything running was touched."
        )
    except AttemptError as e:
        return Outcome.of(e)
    finally:
        renewing.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await a.close_targets()


async def _renew(a: Attempt, attempt: asyncio.Task[Outcome]) -> None:
    """Keep the attempt lease; when it is lost, stop as if interrupted."""
    lease = a.fences[0] if a.fences else None
    while lease is not None:
        await asyncio.sleep(ATTEMPT_LEASE_SECONDS / 3)
        lease = locks.renew(a.db, lease, ATTEMPT_LEASE_SECONDS)
        if lease is None:
            a.say("error: the attempt lease was lost (another process took it over); stopping")
            attempt.cancel()
        else:
            a.fences[0] = lease


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


def _writer(opts: Options) -> StateDB:
    db = open_db(opts.state_location, write=True)
    assert db is not None  # a writer always gets a database
    return db


class _NoProgress:
    def start(self, machine: str, paths: int, size: int) -> None:
        pass

    def advance(self, machine: str, wire_bytes: int) -> None:
        pass

    def finish(self, machine: str, result: MachineTransfer) -> None:
        pass


def _no_progress() -> AbstractContextManager[Progress]:
    from contextlib import nullcontext

    return nullcontext(_NoProgress())
