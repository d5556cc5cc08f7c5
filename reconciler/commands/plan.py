"""`reconciler plan`: what an apply would do, against the record or against another commit."""

from __future__ import annotations

import sys

from reconciler.commands.context import check_format
from reconciler.desired.compile import compile_deployment
from reconciler.errors import InvalidModels, UserError
from reconciler.execute.inputs import (
    compile_with_record,
    deployment_source,
    load_one,
    open_models,
    paused_gc,
)
from reconciler.models.load import load_config, load_deployment, pick_deployment
from reconciler.models.source import at_ref
from reconciler.options import Options
from reconciler.plan.against import as_recorded
from reconciler.plan.diff import make_plan
from reconciler.plan.render import render_json, render_markdown, render_text, summary_line
from reconciler.plan.types import Plan
from reconciler.state.recorded import RecordedState


def run(opts: Options, against: str | None, exit_code: bool, worktree: bool) -> int:
    check_format(opts, ("text", "json", "markdown"))
    with paused_gc():
        plan = plan_against(opts, against, worktree) if against else plan_recorded(opts, worktree)
    if opts.format == "json":
        print(render_json(plan))
    elif opts.format == "markdown":
        print(render_markdown(plan))
    elif opts.quiet:
        print(summary_line(plan))
    else:
        print(render_text(plan, colour=opts.colour, verbose=opts.verbose > 0))
    if plan.blockers:
        return 1
    return 2 if exit_code and plan.has_changes else 0


def plan_recorded(opts: Options, worktree: bool) -> Plan:
    loaded, _ = load_one(opts, worktree)
    desired, recorded = compile_with_record(opts, loaded)
    return make_plan(desired, recorded, destroy_machines=loaded.config.destroyMachines)


def plan_against(opts: Options, base_ref: str, worktree: bool) -> Plan:
    """PR review: BASE compiled from empty is the record; the state DB is never opened."""
    source, config = open_models(opts, worktree)
    name = pick_deployment(config, opts.deployment)
    head = load_deployment(
        deployment_source(opts, source, config, name), config, name, keys=opts.key_policy
    )
    base_source = at_ref(source, base_ref, "--against")
    base_sha = base_source.revision.sha if base_source.revision else None
    recorded = RecordedState(deployment=name, revision=base_sha)
    try:
        base_config = load_config(base_source)
        if name in base_config.root.deployments:
            recorded = as_recorded(
                compile_deployment(
                    load_deployment(base_source, base_config, name, keys=opts.key_policy)
                )
            )
        else:
            _note(f"deployment {name} does not exist at {base_ref}; planning against nothing")
    except InvalidModels as e:
        _note(f"{base_ref} does not validate; planning against nothing:")
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
    except UserError as e:
        _note(f"{base_ref} has no models ({e}); planning against nothing")
    desired = compile_deployment(head, recorded.allocations)
    return make_plan(desired, recorded, destroy_machines=head.config.destroyMachines)


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)
