"""`reconciler history`: the generations and failed attempts of a deployment, newest
first; with `--git`, interleaved with the commits of the models repository that were
never applied. Reads the state DB (and Git); changes nothing."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.commands.status import load_record, nothing_recorded
from reconciler.commands.tables import print_table, short_sha, when
from reconciler.errors import UserError
from reconciler.execute.history import attempt_json
from reconciler.options import Options
from reconciler.state.rows import AttemptRow

NOT_APPLIED = "not_applied"


@dataclass(frozen=True)
class Commit:
    sha: str
    author: str
    time: str  # committer time, ISO 8601 UTC
    subject: str


def run(opts: Options, with_git: bool) -> int:
    _, name, record = load_record(opts)
    attempts = record.attempts if record else []
    rows = [attempt_json(a) for a in attempts]
    if with_git:
        rows = _interleave(rows, git_commits(opts, name, attempts))
    if opts.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if record is None and not rows:
        print(nothing_recorded(opts, name))
        return 0
    if not rows:
        print(f"No attempts of {record.name if record else name} are recorded.")
        return 0
    print_table(
        ["GEN", "TIME", "COMMIT", "AUTHOR", "RESULT", "CHANGES", "SUBJECT"],
        [
            [
                "-" if r["generation"] is None else str(r["generation"]),
                when(r["time"]),
                short_sha(r["commit"]),
                r["author"] or "-",
                r["result"].replace("_", " "),
                r["changes"] or "-",
                r["subject"] or "-",
            ]
            for r in rows
        ],
    )
    return 0


def _commit_json(c: Commit) -> dict[str, Any]:
    return {
        "generation": None,
        "time": c.time,
        "commit": c.sha,
        "author": c.author,
        "email": None,
        "subject": c.subject,
        "commitTime": c.time,
        "result": NOT_APPLIED,
        "reason": None,
        "changes": None,
        "summary": None,
        "attempt": None,
        "startedAt": None,
        "finishedAt": None,
    }


def _interleave(rows: list[dict[str, Any]], commits: list[Commit]) -> list[dict[str, Any]]:
    """The attempts stay in their order (newest first); each commit never attempted goes
    just above the newest attempt of one of its ancestors (above what it would have
    followed), or at the end when there is none. Commits keep their log order."""
    position = {c.sha: i for i, c in enumerate(commits)}
    attempted = {r["commit"] for r in rows if r["commit"]}
    above: dict[int, list[dict[str, Any]]] = {}
    for c in commits:
        if c.sha in attempted:
            continue
        anchor = next(
            (
                i
                for i, r in enumerate(rows)
                if r["commit"] in position and position[r["commit"]] > position[c.sha]
            ),
            len(rows),
        )
        above.setdefault(anchor, []).append(_commit_json(c))
    out: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        out += above.get(i, [])
        out.append(row)
    return out + above.get(len(rows), [])


def git_commits(opts: Options, name: str | None, attempts: list[AttemptRow]) -> list[Commit]:
    """`git log --topo-order` of the models repository at --ref (or HEAD, or for a remote
    or bare repository the deployment's branch), limited to the models tree, back to the
    oldest commit ever attempted (all of it when that commit is not in the log)."""
    from reconciler.models.source import at_ref, is_remote, open_source

    source = open_source(opts.repo, opts.path, opts.ref, False, opts.state_root)
    if opts.ref is None and name and (is_remote(opts.repo) or source.repo.bare):
        try:
            from reconciler.models.load import load_config

            branch = load_config(source).root.deployments[name].branch
            if branch:
                source = at_ref(source, branch, f"deployment {name}: branch")
        except (UserError, KeyError):
            pass  # the head's models do not name it: the head it is
    if source.revision is None:
        return []
    args = ["git", "log", "--topo-order", "--format=%H%x1f%an%x1f%cI%x1f%s", source.revision.sha]
    if source.prefix:
        args += ["--", source.prefix]
    done = subprocess.run(args, cwd=source.repo.git_dir, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"git log failed: {done.stderr.strip()}")
    oldest = next((a.commit for a in reversed(attempts) if a.commit), None)
    commits = []
    for line in done.stdout.splitlines():
        sha, author, stamp, subject = [*line.split("\x1f"), "", "", ""][:4]
        commits.append(Commit(sha, author, _utc(stamp), subject))
        if sha == oldest:
            break
    return commits


def _utc(stamp: str) -> str:
    try:
        return datetime.fromisoformat(stamp).astimezone(UTC).isoformat().replace("+00:00", "Z")
    except ValueError:
        return stamp
