"""What the controller asks Git, cheaply: a branch head without fetching (`git ls-remote`),
ancestry, and whether a commit is signed by an allowed key. All through the git binary:
ls-remote and verify-commit have no gitpython equivalent worth the indirection."""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import UserError
from reconciler.models.source import redact


class GitError(UserError):
    pass


async def _git(*args: str, cwd: str | None = None, env: dict[str, str] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise GitError(err.decode(errors="replace").strip() or f"git {args[0]} failed")
    return out.decode()


async def branch_head(repo: str, branch: str | None) -> str:
    """The commit `branch` (None: the remote's HEAD) points at, asking the remote only."""
    ref = f"refs/heads/{branch}" if branch else "HEAD"
    try:
        out = await _git("ls-remote", "--", repo, ref)
    except GitError as e:
        message = f"{redact(repo)}: cannot list {ref}: {e}".replace(repo, redact(repo))
        raise GitError(message) from None
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if name == ref:
            return sha
    raise GitError(f"{redact(repo)} has no {ref}")


async def default_branch(repo: str) -> str | None:
    """The branch the remote's HEAD names (ls-remote --symref)."""
    out = await _git("ls-remote", "--symref", "--", repo, "HEAD")
    for line in out.splitlines():
        if line.startswith("ref: refs/heads/"):
            return line.split("\t")[0].removeprefix("ref: refs/heads/")
    return None


async def is_ancestor(git_dir: str, old: str, new: str) -> bool:
    try:
        await _git("merge-base", "--is-ancestor", old, new, cwd=git_dir)
    except GitError:
        return False
    return True


@dataclass(frozen=True)
class Signers:
    """Whose signatures count: SSH keys in git's allowed-signers format, and/or a GPG
    keyring; from the controller's own configuration, never from the models repo."""

    allowed_signers: Path | None = None
    gpg_keyring: Path | None = None

    @property
    def required(self) -> bool:
        return self.allowed_signers is not None or self.gpg_keyring is not None


async def check_signature(git_dir: str, sha: str, signers: Signers) -> str | None:
    """None when `sha` is signed by an allowed key; else why not, for a Stalled condition."""
    config = ["-c", "gpg.ssh.allowedSignersFile=" + str(signers.allowed_signers or "/dev/null")]
    with tempfile.TemporaryDirectory(prefix="reconciler-gnupg-") as home:
        env = {"GNUPGHOME": home}
        if signers.gpg_keyring is not None:
            # a copy in a private home: the keyring may sit on a read-only mount
            await _git_import_keys(signers.gpg_keyring, home)
        try:
            await _git(*config, "verify-commit", sha, cwd=git_dir, env=env)
        except GitError as e:
            first = next((ln for ln in str(e).splitlines() if ln.strip()), str(e))
            if "no signature" in str(e).lower() or not str(e).strip():
                return f"commit {sha[:12]} is not signed"
            return f"commit {sha[:12]} is not signed by an allowed key: {first}"
    return None


async def _git_import_keys(keyring: Path, home: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "gpg",
        "--batch",
        "--quiet",
        "--homedir",
        home,
        "--import",
        str(keyring),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode not in (0, 2):  # 2: some keys were already there or skipped
        raise GitError(f"{keyring}: cannot import the GPG keyring: {err.decode().strip()}")
