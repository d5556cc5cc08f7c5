"""`reconciler apply`: run the plan as an attempt (SPEC §3) — build, transfer, then lock,
transition and record; a failure rolls back and is recorded with its reason."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from reconciler.commands.context import compile_with_record, load_one, paused_gc
from reconciler.commands.options import Options
from reconciler.commands.progress import make_progress
from reconciler.desired.state import PROVISIONED_ENVS, DesiredState
from reconciler.errors import UserError
from reconciler.execute.agent import ensure_agent, ship
from reconciler.execute.recover import settle, unsettled
from reconciler.execute.secrets import Secrets, read_secrets
from reconciler.execute.transfer import MachineTransfer, TransferFailed, transfer_all
from reconciler.execute.transition import Transition, TransitionFailed, run_transition
from reconciler.models.load import LoadedDeployment
from reconciler.plan.diff import make_plan
from reconciler.plan.render import render_text
from reconciler.plan.types import Plan
from reconciler.state.db import exclusive, open_db
from reconciler.state.hostkeys import RecordedHostKeys
from reconciler.state.journal import Journal
from reconciler.state.record import (
    finish_attempt,
    record_generation,
    record_store_paths,
    record_transfer,
    recorded_requests,
    start_attempt,
)
from reconciler.state.recorded import RecordedState
from reconciler.store.build import BuildError, build_missing
from reconciler.store.local import LocalStore, PathInfo
from reconciler.targets.base import Target
from reconciler.targets.open import open_target
from reconciler.text import human_bytes, plural

EXIT_FAILED, EXIT_STALLED = 1, 3


@dataclass
class Attempt:
    opts: Options
    db: sqlite_utils.Database
    loaded: LoadedDeployment
    desired: DesiredState
    recorded: RecordedState
    plan: Plan
    machines: list[str]
    max_concurrent: int
    copy_only: bool
    secrets: Secrets

    def say(self, text: str) -> None:
        if self.opts.format == "text" and not self.opts.quiet:
            print(text, file=sys.stderr)


def run(
    opts: Options,
    *,
    dry_run: bool,
    only: str | None,
    max_concurrent: int,
    yes: bool,
    copy_only: bool,
    kill_obsolete: bool,
    allow_recreate: bool,
    provision_only: bool = False,
) -> int:
    if opts.format not in ("text", "json"):
        raise UserError(f"--format {opts.format}: apply writes text or json")
    options = {"kill_obsolete": kill_obsolete, "allow_recreate": allow_recreate}
    with paused_gc():
        loaded, _ = load_one(opts)
        desired, recorded = compile_with_record(opts, loaded)
        plan = _plan(loaded, desired, recorded, options)
    if not opts.quiet and opts.format == "text":
        print(render_text(plan, colour=opts.colour, verbose=opts.verbose > 0))
    if plan.blockers:
        return EXIT_FAILED
    if dry_run:
        return 0
    if only and not (copy_only or provision_only):
        raise UserError(
            "--only works with --copy-only or --provision-only: a generation covers every machine"
        )
    machines = _scope(desired, only)
    if sys.stdin.isatty() and not yes and not _confirm("Apply this plan?"):
        print("Nothing was changed.", file=sys.stderr)
        return EXIT_FAILED
    with exclusive(opts.state_path, "apply"):
        # another apply may have run since the plan above: plan again under the lock
        desired, recorded = compile_with_record(opts, loaded)
        plan = _plan(loaded, desired, recorded, options)
        if any(m.target_env in PROVISIONED_ENVS for m in desired.machines.values()):
            if not _provision(opts, desired, plan, machines):
                return EXIT_FAILED
            # plan again now that addresses and SSH endpoints are known (step 1)
            desired, recorded = compile_with_record(opts, loaded)
            plan = _plan(loaded, desired, recorded, options)
        if provision_only:
            return 0
        if not plan.has_changes and not copy_only:
            print(f"No changes: generation {recorded.generation} already matches {loaded.label}.")
            return 0
        secrets = {} if copy_only else read_secrets(loaded, desired)
        db = open_db(opts.state_path, write=True)
        assert db is not None
        attempt = Attempt(
            opts, db, loaded, desired, recorded, plan, machines, max_concurrent, copy_only, secrets
        )
        return asyncio.run(_interruptible(attempt))


def _provision(opts: Options, desired: DesiredState, plan: Plan, scope: list[str]) -> bool:
    """Step 1: replace what must be replaced (--allow-recreate), then create or find
    every provisioned machine in scope; False when one failed (nothing else is done)."""
    from reconciler.execute.provision import destroy_all, provision_all

    dep = desired.deployment
    replaced = [(c.name, c.target_env, None) for c in plan.machines if c.action == "replace"]
    if replaced:
        print(
            f"Destroying {', '.join(n for n, _, _ in replaced)} to replace them.", file=sys.stderr
        )
        errors = asyncio.run(destroy_all(opts.state_path, dep, replaced))
        if errors:
            for name, error in sorted(errors.items()):
                print(f"{name}: destroy failed: {error}", file=sys.stderr)
            return False
    wanted = [
        m
        for name, m in sorted(desired.machines.items())
        if m.target_env in PROVISIONED_ENVS and name in scope
    ]
    started = time.monotonic()
    done = asyncio.run(
        provision_all(opts.state_path, dep, wanted, desired.allocations.get("container-subnet"))
    )
    for name, error in sorted(done.errors.items()):
        print(f"{name}: provisioning failed: {error}", file=sys.stderr)
    if not opts.quiet and opts.format == "text":
        for name, p in sorted(done.found.items()):
            print(f"  {name:<20} {p.provider_id} {p.state} {p.address or ''}", file=sys.stderr)
        if done.found:
            print(
                f"{plural(len(done.found), 'machine')} provisioned or found in "
                f"{time.monotonic() - started:.1f} s.",
                file=sys.stderr,
            )
    if done.errors:
        print("Nothing was deployed; the machines made so far are recorded.", file=sys.stderr)
    return not done.errors


async def destroy_obsolete(opts: Options, plan: Plan, recorded: RecordedState) -> None:
    """Provisioned machines removed from the model, with destroyMachines or --kill-obsolete."""
    from reconciler.execute.provision import destroy_all

    gone = [
        (c.name, c.target_env, recorded.machines[c.name].provider_id)
        for c in plan.machines
        if c.action == "destroy" and c.name in recorded.machines
    ]
    if not gone:
        return
    errors = await destroy_all(opts.state_path, recorded.deployment, gone)
    for name, _, _ in gone:
        if name in errors:
            print(f"warning: {name}: destroy failed: {errors[name]}", file=sys.stderr)
        else:
            print(f"Destroyed machine {name}.", file=sys.stderr)


def _plan(
    loaded: LoadedDeployment,
    desired: DesiredState,
    recorded: RecordedState,
    options: dict[str, bool],
) -> Plan:
    return make_plan(desired, recorded, destroy_machines=loaded.config.destroyMachines, **options)


async def _interruptible(a: Attempt) -> int:
    """SIGTERM and SIGINT cancel the attempt: steps 2-3 just stop, 4-6 roll back."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await _execute(a)
    except asyncio.CancelledError:
        print("Interrupted before anything running was touched.", file=sys.stderr)
        return EXIT_FAILED
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _execute(a: Attempt) -> int:
    started = time.monotonic()
    state_root = a.opts.state_path.parent
    store = LocalStore(state_root / "store")
    agent = ensure_agent(store)
    host_keys = RecordedHostKeys(a.db)
    targets = {
        m: open_target(m, a.desired.machines[m].connection, state_root, host_keys)
        for m in a.machines
    }
    for name, have in a.recorded.machines.items():  # removed machines: to take down
        if name not in targets and have.connection and not a.copy_only:
            targets[name] = open_target(name, have.connection, state_root, host_keys)
    try:
        unsettled_attempts = not a.copy_only and unsettled(a.db, a.desired.deployment)
        if unsettled_attempts and not await _settle(a, targets, agent):
            return EXIT_STALLED
        attempt = None if a.copy_only else start_attempt(a.db, a.desired, a.plan.to_json())
        needed = {p for m in a.machines for p in a.desired.machines[m].closure}
        try:
            infos, built = await build_missing(
                [p for p in a.desired.packages.values() if p.path in needed],
                a.loaded.git_dir,
                store,
            )
        except BuildError as e:
            if attempt:
                finish_attempt(a.db, attempt, "failed", str(e))
            raise
        infos[agent.path] = agent
        record_store_paths(a.db, infos.values())
        if built:
            a.say(f"Built {plural(len(built), 'package')}: {', '.join(built)}")
        try:
            with make_progress(a.opts.quiet or a.opts.format == "json") as progress:
                sent = await transfer_all(
                    [a.desired.machines[m] for m in a.machines],
                    targets,
                    store,
                    infos,
                    a.max_concurrent,
                    progress,
                    extra=(agent.path,),
                )
        except TransferFailed as failed:
            record_transfer(a.db, a.desired, {m: r.present for m, r in failed.done.items()})
            for machine, error in sorted(failed.errors.items()):
                print(f"{machine}: transfer failed: {error}", file=sys.stderr)
            if attempt:
                finish_attempt(a.db, attempt, "failed", f"transfer failed: {failed}")
            print(
                f"{plural(len(failed.errors), 'machine')} failed; nothing running was touched.",
                file=sys.stderr,
            )
            return EXIT_FAILED
        record_transfer(a.db, a.desired, {m: r.present for m, r in sent.items()})
        if attempt is None:
            _report_copy(a, built, sent, time.monotonic() - started)
            return 0
        return await _transition(a, attempt, targets, agent.path, sent)
    finally:
        await asyncio.gather(*(t.close() for t in targets.values()), return_exceptions=True)


async def _settle(a: Attempt, targets: dict[str, Target], agent: PathInfo) -> bool:
    """First settle what a killed apply left behind; False when that stays stalled."""
    await ship(targets.values(), LocalStore(a.opts.state_path.parent / "store"), agent)
    for s in await settle(a.db, a.desired.deployment, targets, agent.path):
        what = {
            "failed": "it had changed nothing",
            "rolled_back": "rolled back",
            "stalled": "its rollback failed again",
        }[s.status]
        print(f"Settled an interrupted attempt ({s.attempt[:8]}): {what}.", file=sys.stderr)
        for problem in s.problems:
            print(f"  {problem}", file=sys.stderr)
        if s.status == "stalled":
            print("Stalled: fix the machines named above, then apply again.", file=sys.stderr)
            return False
    return True


async def _transition(
    a: Attempt,
    attempt: str,
    targets: dict[str, Target],
    agent: str,
    sent: dict[str, MachineTransfer],
) -> int:
    generation = 1 + (
        a.db.execute(
            "SELECT max(generation) FROM attempts WHERE deployment = ?", [a.desired.deployment]
        ).fetchone()[0]
        or 0
    )
    t = Transition(
        desired=a.desired,
        recorded=a.recorded,
        plan=a.plan,
        targets=targets,
        agent=agent,
        attempt=attempt,
        journal=Journal(a.db, attempt),
        generation=generation,
        old_requests=recorded_requests(a.db, a.desired.deployment),
        secrets=a.secrets,
    )
    try:
        requests, warnings = await run_transition(t)
    except TransitionFailed as failed:
        status = "rolled_back" if failed.rolled_back else "stalled"
        finish_attempt(a.db, attempt, status, failed.reason)
        print(f"error: {failed.reason}", file=sys.stderr)
        if failed.rolled_back:
            print("Rolled back: the previous generation keeps running.", file=sys.stderr)
            return EXIT_FAILED
        for problem in failed.details:
            print(f"  rollback: {problem}", file=sys.stderr)
        print("Stalled: the rollback did not complete; see `reconciler status`.", file=sys.stderr)
        return EXIT_STALLED
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    number = record_generation(
        a.db, attempt, a.desired, {m: r.present for m, r in sent.items()}, requests
    )
    await destroy_obsolete(a.opts, a.plan, a.recorded)
    _report_generation(a, number, sum(r.wire_bytes for r in sent.values()))
    return 0


def _report_generation(a: Attempt, number: int, wire_bytes: int) -> None:
    rev = a.desired.revision
    endpoints = {
        key: f"http://{a.desired.machines[i.machine].address}:{i.port}"
        for key, i in sorted(a.desired.instances.items())
        if i.type == "process" and i.port is not None
    }
    if a.opts.format == "json":
        print(
            json.dumps(
                {
                    "generation": number,
                    "revision": rev.sha if rev else None,
                    "endpoints": endpoints,
                    "transferredBytes": wire_bytes,
                },
                indent=2,
            )
        )
        return
    at = f" (commit {rev.sha[:12]}: {rev.subject})" if rev else ""
    print(f"Generation {number} of {a.desired.deployment} is active{at}.")
    if not a.opts.quiet:
        for key, url in endpoints.items():
            print(f"  {key:<40} {url}")


def _report_copy(
    a: Attempt, built: list[str], results: dict[str, MachineTransfer], seconds: float
) -> None:
    if a.opts.format == "json":
        print(
            json.dumps(
                {"built": built, "transfers": {m: _as_json(r) for m, r in results.items()}},
                indent=2,
            )
        )
        return
    paths = sum(len(r.sent) for r in results.values())
    wire = sum(r.wire_bytes for r in results.values())
    size = sum(r.size for r in results.values())
    print(
        f"Transferred {plural(paths, 'store path')} ({human_bytes(size)} unpacked, "
        f"{human_bytes(wire)} on the wire) to {plural(len(results), 'machine')} in "
        f"{seconds:.1f} s."
    )


def _as_json(r: MachineTransfer) -> dict[str, Any]:
    return {
        "sent": r.sent,
        "size": r.size,
        "wireBytes": r.wire_bytes,
        "compression": r.compression,
        "seconds": round(r.seconds, 3),
    }


def _scope(desired: DesiredState, only: str | None) -> list[str]:
    if not only:
        return sorted(desired.machines)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in desired.machines]
    if unknown:
        raise UserError(
            f"--only {only}: no machine {', '.join(unknown)} in deployment "
            f"{desired.deployment} (machines: {', '.join(sorted(desired.machines))})"
        )
    return sorted(set(names))


def _confirm(question: str) -> bool:
    return input(f"{question} Only 'yes' is accepted: ").strip() == "yes"
