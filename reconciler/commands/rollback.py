"""`reconciler rollback [--to N]`: deploy generation N's commit again (default: the one
before the current), as a new generation; the controller's auto-apply then pauses until
a new commit arrives, so it does not undo the rollback."""

from __future__ import annotations

import dataclasses
import sys

from reconciler.commands import apply
from reconciler.errors import UserError
from reconciler.execute.inputs import load_one
from reconciler.execute.steps import AttemptOptions
from reconciler.options import Options
from reconciler.state.db import open_db
from reconciler.state.deployments import pause
from reconciler.state.rows import generations


def run(opts: Options, to: int | None, yes: bool) -> int:
    head, _ = load_one(opts)
    db = open_db(opts.state_location, write=False)
    by_number = {} if db is None else generations(db, head.name)
    if db is not None:
        db.close()
    if not by_number:
        raise UserError(f"deployment {head.name} has no generation to roll back to")
    current = max(by_number)
    target = current - 1 if to is None else to
    if target not in by_number or target == current:
        choices = ", ".join(str(n) for n in sorted(by_number) if n != current) or "none"
        raise UserError(
            f"--to {target}: not a generation of {head.name} to roll back to "
            f"(current: {current}; earlier: {choices}; see `reconciler history`)"
        )
    sha = by_number[target]
    if sha is None:
        raise UserError(f"generation {target} of {head.name} was not deployed from a commit")
    if not opts.quiet:
        print(
            f"Rolling {head.name} back to generation {target} (commit {sha[:12]}).",
            file=sys.stderr,
        )
    at = dataclasses.replace(opts, ref=sha, deployment=head.name)
    code = apply.run(at, AttemptOptions(), yes=yes)
    if code == 0:
        db = open_db(opts.state_location, write=True)
        assert db is not None
        paused = head.revision.sha if head.revision else None
        pause(db, head.name, paused)
        db.close()
        if paused and not opts.quiet:
            print(
                f"Auto-apply of {head.name} is paused until a commit newer than "
                f"{paused[:12]} arrives.",
                file=sys.stderr,
            )
    return code
