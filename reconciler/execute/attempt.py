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
import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from reconciler.desired.host_addresses import claim
from reconciler.desired.state import DesiredState
from reconciler.execute.agent_client import ensure_agent
from reconciler.execute.inputs import compile_with_record, registry_owner
from reconciler.execute.outcome import (
    AttemptError,
    Failed,
    Outcome,
    Reason,
    Result,
    Waiting,
)
from reconciler.execute.steps import REASON_ENV as REASON_ENV  # the controller sets it
from reconciler.execute.steps import (
    Attempt,
    AttemptOptions,
    Next,
    Step,
    build,
    plan_for,
    provision,
    record,
    record_destroyed,
    settle_first,
    take_down,
    transfer,
    transition,
)
from reconciler.execute.transfer import MachineTransfer, Progress
from reconciler.models.load import LoadedDeployment
from reconciler.options import Options
from reconciler.plan.diff import make_plan
from reconciler.state import locks
from reconciler.state.db import StateDB, open_db
from reconciler.state.locks import Lease
from reconciler.state.machines import (
    reserve_allocations,
)
from reconciler.state.recorded import RecordedState
from reconciler.state.rows import read_recorded
from reconciler.store.local import LocalStore

ATTEMPT_LEASE_SECONDS = 60.0  # renewed every third of it while the attempt runs
RESERVE_TRIES = 5
FENCE_ENV = "RECONCILER_FENCE"  # name=holder:token of a lease every write must still hold


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
        owner, held = registry_owner(opts), recorded.allocations
        if not claim(owner, desired.deployment, desired.allocations, held=held):
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
