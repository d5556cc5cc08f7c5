"""`reconciler apply`: run the plan (SPEC §3). This stage: build and transfer
(`--copy-only`), and `--dry-run`; activation comes with the transaction stage."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from reconciler.commands.context import (
    check_format,
    compile_with_record,
    load_one,
    paused_gc,
)
from reconciler.commands.options import Options
from reconciler.commands.progress import make_progress
from reconciler.desired.state import DesiredState
from reconciler.errors import UserError
from reconciler.execute.transfer import MachineTransfer, TransferFailed, transfer_all
from reconciler.plan.diff import make_plan
from reconciler.plan.render import render_text
from reconciler.state.db import exclusive, open_db
from reconciler.state.hostkeys import RecordedHostKeys
from reconciler.state.record import record_store_paths, record_transfer
from reconciler.store.build import build_missing
from reconciler.store.local import LocalStore
from reconciler.targets.base import Target
from reconciler.targets.open import open_target
from reconciler.text import human_bytes, plural

DEFAULT_MAX_CONCURRENT = 10


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
) -> int:
    with paused_gc():
        loaded, _ = load_one(opts)
        desired, recorded = compile_with_record(opts, loaded)
        plan = make_plan(
            desired,
            recorded,
            kill_obsolete=kill_obsolete,
            destroy_machines=loaded.config.destroyMachines,
            allow_recreate=allow_recreate,
        )
    check_format(opts, ("text", "json"))
    if not opts.quiet and opts.format == "text":
        print(render_text(plan, colour=opts.colour, verbose=opts.verbose > 0))
    if plan.blockers:
        return 1
    if dry_run:
        return 0
    if not copy_only:
        raise UserError(
            "activating services is not available in this release yet; "
            "`apply --copy-only` builds and transfers everything the plan needs"
        )
    machines = _scope(desired, only)
    if sys.stdin.isatty() and not yes and not _confirm("Build and transfer now?"):
        print("Nothing was changed.", file=sys.stderr)
        return 1
    with exclusive(opts.state_path, "apply"):
        # what was planned above may be stale if another apply ran meanwhile: compile again
        desired, _ = compile_with_record(opts, loaded)
        return copy(opts, desired, loaded.git_dir, machines, max_concurrent)


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
    answer = input(f"{question} Only 'yes' is accepted: ")
    return answer.strip() == "yes"


def copy(
    opts: Options, desired: DesiredState, git_dir: str, machines: list[str], max_concurrent: int
) -> int:
    """Steps 2 and 3: build the missing store paths, then send each machine what it lacks."""
    db = open_db(opts.state_path, write=True)
    assert db is not None
    state_root = opts.state_path.parent
    store = LocalStore(state_root / "store")
    needed = {p for m in machines for p in desired.machines[m].closure}
    packages = [p for p in desired.packages.values() if p.path in needed]
    started = time.monotonic()
    infos, built = asyncio.run(build_missing(packages, git_dir, store))
    record_store_paths(db, infos.values())
    if built and not opts.quiet and opts.format == "text":
        print(f"Built {plural(len(built), 'package')}: {', '.join(built)}", file=sys.stderr)
    host_keys = RecordedHostKeys(db)
    targets = {m: open_target(desired.machines[m], state_root, host_keys) for m in machines}

    async def send() -> dict[str, MachineTransfer]:
        try:
            with make_progress(opts.quiet or opts.format == "json") as progress:
                return await transfer_all(
                    [desired.machines[m] for m in machines],
                    targets,
                    store,
                    infos,
                    max_concurrent,
                    progress,
                )
        finally:
            await _close(targets)

    try:
        results = asyncio.run(send())
    except TransferFailed as failed:
        record_transfer(db, desired, {m: r.present for m, r in failed.done.items()})
        for machine, error in sorted(failed.errors.items()):
            print(f"{machine}: transfer failed: {error}", file=sys.stderr)
        print(
            f"{plural(len(failed.errors), 'machine')} failed; nothing running was touched.",
            file=sys.stderr,
        )
        return 1
    record_transfer(db, desired, {m: r.present for m, r in results.items()})
    if opts.format == "json":
        print(
            json.dumps(
                {"built": built, "transfers": {m: _as_json(r) for m, r in results.items()}},
                indent=2,
            )
        )
    else:  # the one line -q keeps
        sent = sum(len(r.sent) for r in results.values())
        wire = sum(r.wire_bytes for r in results.values())
        size = sum(r.size for r in results.values())
        print(
            f"Transferred {plural(sent, 'store path')} ({human_bytes(size)} unpacked, "
            f"{human_bytes(wire)} on the wire) to {plural(len(results), 'machine')} in "
            f"{time.monotonic() - started:.1f} s."
        )
    return 0


def _as_json(r: MachineTransfer) -> dict[str, object]:
    return {
        "sent": r.sent,
        "size": r.size,
        "wireBytes": r.wire_bytes,
        "compression": r.compression,
        "seconds": round(r.seconds, 3),
    }


async def _close(targets: dict[str, Target]) -> None:
    await asyncio.gather(*(t.close() for t in targets.values()), return_exceptions=True)
