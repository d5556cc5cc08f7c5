"""`reconciler destroy`: deactivate everything in reverse dependency order and remove the
deployment's profiles from its machines — an attempt towards an empty desired state,
under the same leases and rollback — then destroy its provisioned machines. Persistent
state is kept (`gc --delete-state` removes it)."""

from __future__ import annotations

import json
import sys

from reconciler.commands.apply import report
from reconciler.errors import UserError
from reconciler.execute.attempt import destroy_deployment
from reconciler.execute.outcome import Reason, Result
from reconciler.execute.steps import AttemptOptions
from reconciler.options import Options
from reconciler.state.recorded import RecordedState


def run(opts: Options, yes: bool, keep_machines: bool = False) -> int:
    name = opts.deployment
    if name is None:
        raise UserError("destroy needs -d NAME: which deployment to take down")

    def confirm(recorded: RecordedState) -> bool:
        if not sys.stdin.isatty() or yes:
            return True
        answer = input(
            f"Take down all {len(recorded.instances)} instances of {name}? Only 'yes' is accepted: "
        )
        return answer.strip() == "yes"

    def say(text: str) -> None:
        print(text, file=sys.stderr)

    outcome = destroy_deployment(
        opts, name, AttemptOptions(keep_machines=keep_machines), say, confirm
    )
    if outcome.result == Result.UNCHANGED:
        print(outcome.message)
        return 0
    if outcome.reason == Reason.DECLINED:
        print(outcome.message, file=sys.stderr)
        return 1
    if not outcome.ok:
        report(opts, outcome, None)
        return outcome.exit_code
    destroyed, deactivated = outcome.details, outcome.report.get("deactivated", [])
    if opts.format == "json":
        print(
            json.dumps(
                {
                    "generation": outcome.generation,
                    "deactivated": deactivated,
                    "destroyedMachines": destroyed,
                }
            )
        )
    else:
        kept = "persistent state was kept"
        if destroyed:
            kept = f"{len(destroyed)} provisioned machines destroyed, with their disks"
        print(
            f"Destroyed {name}: {len(deactivated)} instances taken down "
            f"(generation {outcome.generation}); {kept}."
        )
    return 0
