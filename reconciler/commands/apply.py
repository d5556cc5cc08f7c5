"""`reconciler apply`: show the plan, ask, then run it as an attempt (execute/attempt.py)
and say how it ended. With `--format json` the outcome is printed as JSON whatever it
is (the controller reads it from its child)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable

from reconciler.commands.progress import make_progress
from reconciler.errors import UserError
from reconciler.execute.attempt import apply_models
from reconciler.execute.inputs import compile_with_record, load_one, paused_gc
from reconciler.execute.outcome import Outcome, Reason, Result
from reconciler.execute.steps import AttemptOptions, plan_for
from reconciler.models.load import LoadedDeployment
from reconciler.options import Options
from reconciler.plan.render import render_text
from reconciler.text import human_bytes, plural


def run(
    opts: Options,
    options: AttemptOptions,
    *,
    dry_run: bool = False,
    yes: bool = False,
    loaded: LoadedDeployment | None = None,
) -> int:
    if opts.format not in ("text", "json"):
        raise UserError(f"--format {opts.format}: apply writes text or json")
    with paused_gc():
        if loaded is None:
            loaded, _ = load_one(opts)
        desired, recorded = compile_with_record(opts, loaded)
        plan = plan_for(loaded, desired, recorded, options)
    if not opts.quiet and opts.format == "text":
        print(render_text(plan, colour=opts.colour, verbose=opts.verbose > 0))
    if plan.blockers:
        return 1
    if dry_run:
        return 0
    if options.scope and not (options.copy_only or options.provision_only):
        raise UserError(
            "--only works with --copy-only or --provision-only: a generation covers every machine"
        )
    check_scope(desired.deployment, desired.machines, options.scope)
    if sys.stdin.isatty() and not yes and not _confirm("Apply this plan?"):
        print("Nothing was changed.", file=sys.stderr)
        return 1

    def say(text: str) -> None:
        print(text, file=sys.stderr)

    def progress() -> object:
        return make_progress(opts.quiet or opts.format == "json")

    outcome = apply_models(opts, loaded, options, say, progress)  # type: ignore[arg-type]
    report(opts, outcome, loaded)
    return outcome.exit_code


def report(opts: Options, outcome: Outcome, loaded: LoadedDeployment | None) -> None:
    if opts.format == "json":
        print(json.dumps(outcome.to_json(), indent=2))
        if not outcome.ok:
            _errors(outcome)
        return
    if outcome.result == Result.APPLIED:
        rev = loaded.revision if loaded else None
        name = loaded.name if loaded else opts.deployment
        at = f" (commit {rev.sha[:12]}: {rev.subject})" if rev else ""
        print(f"Generation {outcome.generation} of {name} is active{at}.")
        if not opts.quiet:
            for key, url in outcome.endpoints.items():
                print(f"  {key:<40} {url}")
    elif outcome.result == Result.UNCHANGED:
        print(outcome.message)
    elif outcome.reason == Reason.COPIED:
        r = outcome.report
        transfers = r["transfers"].values()
        paths = sum(len(t["sent"]) for t in transfers)
        size = sum(t["size"] for t in transfers)
        print(
            f"Transferred {plural(paths, 'store path')} ({human_bytes(size)} unpacked, "
            f"{human_bytes(outcome.transferred_bytes)} on the wire) to "
            f"{plural(len(r['transfers']), 'machine')} in {r['seconds']:.1f} s."
        )
    elif not outcome.ok:
        _errors(outcome)


def _errors(outcome: Outcome) -> None:
    """How a failed attempt ended, in the words a person needs."""
    if outcome.reason in (Reason.ROLLED_BACK, Reason.LOCK_REFUSED):
        print(f"error: {outcome.message}", file=sys.stderr)
        print("Rolled back: the previous generation keeps running.", file=sys.stderr)
    elif outcome.reason == Reason.ROLLBACK_FAILED and outcome.result == Result.STALLED:
        if outcome.message.startswith("Stalled:"):  # settling an earlier attempt
            print(outcome.message, file=sys.stderr)
            return
        print(f"error: {outcome.message}", file=sys.stderr)
        for problem in outcome.details:
            print(f"  rollback: {problem}", file=sys.stderr)
        print("Stalled: the rollback did not complete; see `reconciler status`.", file=sys.stderr)
    elif outcome.reason == Reason.BUILD_FAILED:
        print(f"error: {outcome.message}", file=sys.stderr)
    else:
        print(outcome.message, file=sys.stderr)


def check_scope(deployment: str, machines: Iterable[str], only: list[str] | None) -> None:
    """--only names machines of the deployment."""
    names = set(machines)
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise UserError(
            f"--only {','.join(only or [])}: no machine {', '.join(unknown)} in deployment "
            f"{deployment} (machines: {', '.join(sorted(names))})"
        )


def _confirm(question: str) -> bool:
    return input(f"{question} Only 'yes' is accepted: ").strip() == "yes"
