"""Where models come from: a tree in a Git repository, never loose files.

A commit's tree by default; with --worktree the tree `git write-tree` would give for the
work tree (built in a temporary index, so the user's index is untouched).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import git

from reconciler.errors import UserError

_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")


@dataclass(frozen=True)
class Revision:
    """The commit a desired state was compiled from: the audit trail of a generation."""

    sha: str
    author: str
    email: str
    subject: str
    time: str  # ISO 8601, committer time


@dataclass(frozen=True)
class TreeEntry:
    kind: str  # "tree" | "blob" | …
    id: str


class ModelSource:
    """Read-only view of the models tree (a subfolder `prefix` of a Git tree)."""

    def __init__(
        self, repo: git.Repo, tree: str, prefix: str, revision: Revision | None, label: str
    ) -> None:
        self.repo = repo
        self.tree = tree
        self.prefix = prefix.strip("/")
        self.revision = revision
        self.label = label  # what we read: "commit abc1234" or "work tree"
        self._entries: dict[str, TreeEntry | None] = {}  # a tree never changes: asked once

    def display(self, rel: str) -> str:
        """The path a person sees in errors: relative to the repository root."""
        rel = posixpath.normpath(rel)
        if rel == ".":
            return self.prefix or "."
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _spec(self, rel: str) -> str:
        path = self.display(rel)
        return f"{self.tree}:{'' if path == '.' else path}"

    def read(self, rel: str) -> bytes | None:
        entry = self.entries([rel]).get(rel)
        if entry is None or entry.kind != "blob":
            return None
        data: bytes = self.repo.odb.stream(bytes.fromhex(entry.id)).read()
        return data

    def entries(self, rels: list[str]) -> dict[str, TreeEntry | None]:
        """Look up many paths with one `git cat-file --batch-check` (those not looked up
        before: one source read by many deployments asks once)."""
        missing = sorted({r for r in rels if r not in self._entries})
        if missing:
            self._entries.update(self._look_up(missing))
        return {r: self._entries[r] for r in rels}

    def _look_up(self, rels: list[str]) -> dict[str, TreeEntry | None]:
        lines = "".join(f"{self._spec(r)}\n" for r in rels)
        out = subprocess.run(
            ["git", "cat-file", "--batch-check=%(objectname) %(objecttype)"],
            cwd=self.repo.git_dir,
            input=lines,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        found: dict[str, TreeEntry | None] = {}
        for rel, line in zip(rels, out, strict=True):
            parts = line.split()
            found[rel] = (
                TreeEntry(kind=parts[1], id=parts[0])
                if len(parts) == 2 and parts[1] != "missing"
                else None
            )
        return found


def within_tree(rel: str) -> str | None:
    """`rel` normalised inside the models tree ("." is its root); None if it leaves it."""
    if rel.startswith("/"):
        return None
    norm = posixpath.normpath(rel)
    return None if norm == ".." or norm.startswith("../") else norm


def is_remote(repo: str) -> bool:
    return "://" in repo or bool(_SCP_LIKE.match(repo))


def open_source(
    repo_arg: str,
    path: str | None,
    ref: str | None,
    worktree: bool,
    cache_dir: Path,
) -> ModelSource:
    """Open the models tree named by the global options --repo, --path, --ref, --worktree."""
    if is_remote(repo_arg):
        if worktree:
            raise UserError("--worktree needs a local work tree, not a remote repository")
        repo = mirror(repo_arg, cache_dir)
        prefix = path or ""
    else:
        try:
            repo = git.Repo(repo_arg, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise UserError(
                f"{repo_arg}: not a Git repository; models are read from commits "
                "(run `git init` and commit them, or `reconciler init DIR`)"
            ) from None
        root = Path(repo.working_tree_dir or repo.git_dir).resolve()
        inside = Path(repo_arg).resolve().relative_to(root).as_posix()
        prefix = str(PurePosixPath(inside, path or ""))
    normal = within_tree(prefix)
    if normal is None:
        raise UserError(f"--path {path}: must be a folder inside the repository")
    prefix = "" if normal == "." else normal
    if worktree:
        if repo.bare:
            raise UserError("--worktree needs a work tree; this repository is bare")
        return ModelSource(repo, _worktree_tree(repo), prefix, None, "work tree")
    commit = resolve(repo, ref or "HEAD", "--ref" if ref else None)
    return ModelSource(repo, commit.tree.hexsha, prefix, revision_of(commit), commit.hexsha[:12])


def resolve(repo: git.Repo, ref: str, option: str | None) -> git.Commit:
    """The commit `ref` names; `option` is what the user typed it as, for the message."""
    try:
        return repo.commit(ref)
    except (git.BadName, ValueError):
        if not repo.head.is_valid() and option is None:
            raise UserError(
                "the repository has no commits yet; models are read from commits: "
                "commit them (or use --worktree with validate and plan)"
            ) from None
        named = f"{option} {ref}" if option else ref
        raise UserError(f"{named}: no such commit, branch or tag") from None


def revision_of(commit: git.Commit) -> Revision:
    message = commit.message if isinstance(commit.message, str) else commit.message.decode()
    return Revision(
        sha=commit.hexsha,
        author=str(commit.author.name),
        email=str(commit.author.email),
        subject=message.split("\n", 1)[0],
        time=datetime.fromtimestamp(commit.committed_date, UTC).isoformat(),
    )


def at_ref(source: ModelSource, ref: str, option: str | None) -> ModelSource:
    """The same models tree at another commit (a deployment's branch, a PR's base)."""
    commit = resolve(source.repo, ref, option)
    return ModelSource(
        source.repo, commit.tree.hexsha, source.prefix, revision_of(commit), commit.hexsha[:12]
    )


def mirror(url: str, cache_dir: Path) -> git.Repo:
    """A bare mirror of a remote repository in the cache, fetched now."""
    target = cache_dir / "repos" / hashlib.sha256(url.encode()).hexdigest()[:16]
    try:
        try:
            repo = git.Repo(target)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            shutil.rmtree(target, ignore_errors=True)  # a half-made mirror: start again
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # URLs may hold tokens
            # clone beside it and rename into place, so a concurrent run never sees half
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                git.Repo.clone_from(url, Path(tmp) / "m", mirror=True)
                with contextlib.suppress(OSError):  # another run was first: use its mirror
                    os.rename(Path(tmp) / "m", target)
            return git.Repo(target)
        # controllers and applies on one host share the mirror: one fetch at a time
        with open(target / "reconciler-fetch.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            repo.git.fetch("--prune", "origin", "+refs/heads/*:refs/heads/*")
    except git.GitCommandError as e:
        detail = redact(str(e.stderr or e).strip())
        raise UserError(f"{redact(url)}: cannot fetch: {detail}") from None
    return repo


_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/@\s'\"]*@", re.IGNORECASE)
_QUERY = re.compile(r"\b([a-z][a-z0-9+.-]*://[^\s'\"?#]*\?)([^\s'\"#]*)", re.IGNORECASE)


def redact(text: str) -> str:
    """A URL, or a message quoting URLs (git's own), fit for messages and logs: no
    user:password@ part and no query values (`?token=…`), where credentials travel."""
    text = _USERINFO.sub(r"\1", text)
    return _QUERY.sub(lambda m: m[1] + _hidden(m[2]), text)


def _hidden(query: str) -> str:
    pairs = (p.partition("=") for p in query.split("&"))
    return "&".join(name + "=***" if eq else "***" for name, eq, _ in pairs)


def _worktree_tree(repo: git.Repo) -> str:
    root = repo.working_tree_dir
    assert root is not None
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index"
        current = Path(repo.git_dir) / "index"
        if current.exists():
            shutil.copyfile(current, index)
        env = {**os.environ, "GIT_INDEX_FILE": str(index)}
        subprocess.run(
            ["git", "add", "-A", "."], cwd=root, env=env, check=True, capture_output=True
        )
        tree = subprocess.run(
            ["git", "write-tree"], cwd=root, env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
    return tree
