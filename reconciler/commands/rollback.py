"""`reconciler rollback [--to N]`: deploy generation N's commit again (default: the one
before the current), as a new generation; the controller's auto-apply then pauses until
a new commit arrives, so it does not undo the rollback."""

from __future__ import annotations

import dataclasses
import sys

from reconciler.commands import apply
from reconciler.commands.context import load_one
from reconciler.commands.options import Options
from reconciler.errors import UserError
from reconciler.state.db import open_db, transaction


def run(opts: Options, to: int | None, yes: bool) -> int:
    head, _ = load_one(opts)
    db = open_db(opts.state_path, write=False) if opts.state_path.exists() else None
    rows = (
        []
        if db is None
        else list(
            db.query(
                "SELECT generation, commit_sha FROM attempts WHERE deployment = ? "
                "AND generation IS NOT NULL ORDER BY generation",
                [head.name],
            )
        )
    )
    if not rows:
        raise UserError(f"deployment {head.name} has no generation to roll back to")
    by_number = {r["generation"]: r["commit_sha"] for r in rows}
    current = rows[-1]["generation"]
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
    code = apply.run(
        dataclasses.replace(opts, ref=sha, deployment=head.name),
        dry_run=False,
        only=None,
        max_concurrent=10,
        yes=yes,
        copy_only=False,
        kill_obsolete=False,
        allow_recreate=False,
    )
    if code == 0:
        db = open_db(opts.state_path, write=True)
        assert db is not None
        paused = head.revision.sha if head.revision else None
        with transaction(db):
            db.execute(
                "UPDATE deployments SET paused_at_sha = ? WHERE name = ?", [paused, head.name]
            )
        if paused and not opts.quiet:
            print(
                f"Auto-apply of {head.name} is paused until a commit newer than "
                f"{paused[:12]} arrives.",
                file=sys.stderr,
            )
    return code
