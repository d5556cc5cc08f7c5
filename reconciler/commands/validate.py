"""`reconciler validate`: load, check and compile every deployment; nothing is changed."""

from __future__ import annotations

import json
import sys
from typing import Any

from reconciler.commands.context import check_format
from reconciler.desired.compile import compile_deployment
from reconciler.errors import InvalidModels, Problem, UserError
from reconciler.execute.inputs import deployment_source, open_models, paused_gc
from reconciler.models.load import load_deployment, pick_deployment
from reconciler.options import Options
from reconciler.text import plural


def run(opts: Options, worktree: bool) -> int:
    check_format(opts, ("text", "json"))
    try:
        with paused_gc():
            problems, checked = _check(opts, worktree)
    except UserError as e:
        if opts.format != "json":
            raise
        print(json.dumps({"valid": False, "deployments": [], "problems": [], "error": str(e)}))
        return 1
    if opts.format == "json":
        result = {
            "valid": not problems,
            "deployments": checked,
            "problems": [p.__dict__ for p in problems],
        }
        print(json.dumps(result, indent=2))
    else:
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            bad = ", ".join(str(d["name"]) for d in checked if not d["valid"])
            which = f" in {bad}" if bad else ""
            print(
                f"{plural(len(problems), 'problem')}{which}; nothing was changed.", file=sys.stderr
            )
        elif not opts.quiet:
            for d in checked:
                print(
                    f"{d['name']}: valid ({plural(d['machines'], 'machine')}, "
                    f"{plural(d['services'], 'service')}, {plural(d['instances'], 'instance')}, "
                    f"{plural(d['packages'], 'package')})"
                )
    return 1 if problems else 0


def _check(opts: Options, worktree: bool) -> tuple[list[Problem], list[dict[str, Any]]]:
    try:
        source, config = open_models(opts, worktree)
    except InvalidModels as e:
        return sorted(set(e.problems)), []
    names = (
        [pick_deployment(config, opts.deployment)] if opts.deployment else config.deployment_names()
    )
    problems: list[Problem] = []
    checked: list[dict[str, Any]] = []
    for name in names:
        try:
            loaded = load_deployment(
                deployment_source(opts, source, config, name), config, name, keys=opts.key_policy
            )
            desired = compile_deployment(loaded)
        except InvalidModels as e:
            problems += e.problems
            checked.append({"name": name, "valid": False})
            continue
        checked.append(
            {
                "name": name,
                "valid": True,
                "revision": loaded.revision.sha if loaded.revision else None,
                "machines": len(desired.machines),
                "services": len(desired.digests),
                "instances": len(desired.instances),
                "packages": len(desired.packages),
            }
        )
    return sorted(set(problems)), checked
