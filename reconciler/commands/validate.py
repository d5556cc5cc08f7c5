"""`reconciler validate`: load, check and compile every deployment; nothing is changed."""

from __future__ import annotations

import json
import sys

from reconciler.commands.context import Options, check_format, deployment_source, open_models
from reconciler.desired.compile import compile_deployment
from reconciler.errors import InvalidModels, Problem
from reconciler.models.load import load_deployment, pick_deployment


def run(opts: Options, worktree: bool) -> int:
    check_format(opts, ("text", "json"))
    problems: list[Problem] = []
    checked: list[dict[str, object]] = []
    try:
        source, config = open_models(opts, worktree)
    except InvalidModels as e:
        problems = e.problems
        names: list[str] = []
    else:
        names = (
            [pick_deployment(config, opts.deployment)]
            if opts.deployment
            else config.deployment_names()
        )
    for name in names:
        try:
            loaded = load_deployment(deployment_source(opts, source, config, name), config, name)
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
    problems = sorted(set(problems))
    if opts.format == "json":
        print(
            json.dumps(
                {
                    "valid": not problems,
                    "deployments": checked,
                    "problems": [p.__dict__ for p in problems],
                },
                indent=2,
            )
        )
    else:
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print(
                f"{len(problems)} problem{'s' * (len(problems) != 1)}; nothing was changed.",
                file=sys.stderr,
            )
        elif not opts.quiet:
            for d in checked:
                print(
                    f"{d['name']}: valid ({d['machines']} machines, {d['services']} services, "
                    f"{d['instances']} instances, {d['packages']} packages)"
                )
    return 1 if problems else 0
