"""What the controller asks Git, cheaply: a branch head without fetching (`git ls-remote`),
ancestry, and whether a commit is signed by an allowed key. All through the git binary:
ls-remote and verify-commit have no gitpython equivalent worth the indirection. Every
error it raises has its URLs redacted (no user:password@, no `?token=` values)."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import UserError
from reconciler.models.source import redact


class GitError(UserError):
    pass


async def _run(
    *argv: str, cwd: str | None = None, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def _git(*args: str, cwd: str | None = None, env: dict[str, str] | None = None) -> str:
    code, out, err = await _run("git", *args, cwd=cwd, env=env)
    if code != 0:
        raise GitError(redact(err.strip()) or f"git {_subcommand(args)} failed")
    return out


def _subcommand(args: tuple[str, ...]) -> str:
    """`verify-commit` of `-c key=value verify-commit sha`."""
    rest = list(args)
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] == "-c" else rest[1:]
    return rest[0] if rest else "git"


async def branch_head(repo: str, branch: str | None) -> str:
    """The commit `branch` (None: the remote's HEAD) points at, asking the remote only."""
    ref = f"refs/heads/{branch}" if branch else "HEAD"
    try:
        out = await _git("ls-remote", "--", repo, ref)
    except GitError as e:
        raise GitError(f"{redact(repo)}: cannot list {ref}: {e}") from None
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

    def where(self) -> str:
        """Where the allowed keys are listed, as the options that name them."""
        places = [f"--allowed-signers {self.allowed_signers}"] if self.allowed_signers else []
        places += [f"--gpg-keyring {self.gpg_keyring}"] if self.gpg_keyring else []
        return " or ".join(places)


async def check_signature(git_dir: str, sha: str, signers: Signers) -> str | None:
    """None when `sha` is signed by an allowed key; else why not and what would do, for
    a Stalled condition."""
    kind = signature_kind(await _git("cat-file", "commit", sha, cwd=git_dir))
    if kind is None:
        return f"commit {sha[:12]} is not signed; sign it with a key listed in {signers.where()}"
    config = ["-c", "gpg.ssh.allowedSignersFile=" + str(signers.allowed_signers or "/dev/null")]
    with tempfile.TemporaryDirectory(prefix="reconciler-gnupg-") as home:
        env = {"GNUPGHOME": home}
        if signers.gpg_keyring is not None:
            # a copy in a private home: the keyring may sit on a read-only mount
            await _git_import_keys(signers.gpg_keyring, home)
        code, _, err = await _run(
            "git", *config, "verify-commit", "--raw", sha, cwd=git_dir, env=env
        )
    return None if code == 0 else refusal(sha, kind, err, signers)


def signature_kind(commit: str) -> str | None:
    """'ssh', 'gpg' or 'x509' from a raw commit object's signature header; None when it
    has none."""
    headers = commit.partition("\n\n")[0]
    match = re.search(r"^gpgsig(?:-sha256)? -----BEGIN (\w+) ", headers, re.MULTILINE)
    if match is None:
        return None
    return {"SSH": "ssh", "PGP": "gpg"}.get(match[1], "x509")


def refusal(sha: str, kind: str, output: str, signers: Signers) -> str:
    """Why a signed commit is refused, from `git verify-commit --raw`'s output (ssh-keygen's
    words, or gpg's status lines), and what would be right."""
    commit, fix = f"commit {sha[:12]}", f"sign it with a key listed in {signers.where()}"
    if kind == "ssh":
        key = re.search(r"with (\S+) key (\S+)", output)
        named = f"{key[1]} key {key[2]}" if key else "an SSH key"
        if signers.allowed_signers is None:
            return f"{commit} is signed with {named}, but SSH signatures are not accepted; {fix}"
        if key and "No principal matched" in output:
            return (
                f"{commit} is signed with {named}, which matches no principal in "
                f"--allowed-signers {signers.allowed_signers}; add it there, or "
                + ("sign it with a key listed there" if signers.gpg_keyring is None else fix)
            )
        return f"{commit}: its signature by {named} does not verify ({_first(output)}); {fix}"
    if kind == "gpg":
        status = dict(
            line.removeprefix("[GNUPG:] ").partition(" ")[::2]
            for line in output.splitlines()
            if line.startswith("[GNUPG:] ")
        )
        if "NO_PUBKEY" in status:
            errsig = status.get("ERRSIG", "").split()
            named = f"GPG key {errsig[-1] if len(errsig) >= 7 else status['NO_PUBKEY']}"
            if signers.gpg_keyring is None:
                return (
                    f"{commit} is signed with {named}, but GPG signatures are not accepted; {fix}"
                )
            return (
                f"{commit} is signed with {named}, which is not in --gpg-keyring "
                f"{signers.gpg_keyring}; add its public key there, or "
                + ("sign it with a key that is" if signers.allowed_signers is None else fix)
            )
        for word, what in (
            ("BADSIG", "does not match the commit (changed after signing?)"),
            ("EXPKEYSIG", "was made with a key that has expired"),
            ("REVKEYSIG", "was made with a key that was revoked"),
            ("EXPSIG", "has expired"),
        ):
            if word in status:
                key_id = status[word].split(" ")[0]
                return f"{commit}: its signature by GPG key {key_id} {what}; {fix}"
    return f"{commit}: its {kind} signature does not verify ({_first(output)}); {fix}"


def _first(output: str) -> str:
    """The first line that says something, gpg's status lines aside."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith("[GNUPG:]")]
    return (said or lines or ["no reason given"])[0]


async def _git_import_keys(keyring: Path, home: str) -> None:
    code, _, err = await _run(
        "gpg", "--batch", "--quiet", "--homedir", home, "--import", str(keyring)
    )
    if code not in (0, 2):  # 2: some keys were already there or skipped
        raise GitError(f"{keyring}: cannot import the GPG keyring: {err.strip()}")
