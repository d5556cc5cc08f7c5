"""What the controller asks Git, cheaply: the branch heads without fetching (one `git
ls-remote` lists them all, for every deployment tracking the repository), ancestry, and
whether a commit is signed by an allowed key. All through the git binary: ls-remote and
verify-commit have no gitpython equivalent worth the indirection. Every error it raises
has its URLs redacted (no user:password@, no `?token=` values)."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Listing:
    """A repository's HEAD and branch heads at one moment."""

    refs: dict[str, str]  # "HEAD" and "refs/heads/<b>" → commit
    default: str | None  # the branch HEAD names
    at: float = field(default_factory=time.monotonic)

    def head(self, repo: str, branch: str | None) -> str:
        ref = f"refs/heads/{branch}" if branch else "HEAD"
        if ref not in self.refs:
            raise GitError(f"{redact(repo)} has no {ref}")
        return self.refs[ref]


async def list_heads(repo: str) -> Listing:
    """HEAD, the branch it names and every branch head, with one `git ls-remote`."""
    try:
        out = await _git("ls-remote", "--symref", "--", repo, "HEAD", "refs/heads/*")
    except GitError as e:
        raise GitError(f"{redact(repo)}: cannot list its branches: {e}") from None
    refs: dict[str, str] = {}
    default = None
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if sha.startswith("ref: refs/heads/") and name == "HEAD":
            default = sha.removeprefix("ref: refs/heads/")
        elif name:
            refs[name] = sha
    return Listing(refs, default)


class Heads:
    """Branch heads shared by every deployment: one `ls-remote` per repository however
    many deployments track it, and no new one while a listing is younger than the age
    the caller accepts; callers at the same moment share the listing under way."""

    def __init__(self) -> None:
        self.listed: dict[str, Listing] = {}
        self.pending: dict[str, asyncio.Task[Listing]] = {}
        self.listings = 0  # ls-remote runs, for tests and the benchmark

    async def listing(self, repo: str, max_age: float) -> Listing:
        known = self.listed.get(repo)
        if known is not None and time.monotonic() - known.at <= max_age:
            return known
        task = self.pending.get(repo)
        if task is None:
            task = self.pending[repo] = asyncio.create_task(self._list(repo))
        return await asyncio.shield(task)

    async def _list(self, repo: str) -> Listing:
        self.listings += 1
        try:
            found = await list_heads(repo)
        except GitError:
            self.listed.pop(repo, None)
            raise
        finally:
            self.pending.pop(repo, None)
        self.listed[repo] = found
        return found

    async def head(self, repo: str, branch: str | None, max_age: float) -> str:
        return (await self.listing(repo, max_age)).head(repo, branch)

    def forget(self) -> None:
        """A commit was announced (watcher, webhook): the next caller lists again."""
        self.listed.clear()


async def default_branch(repo: str) -> str | None:
    """The branch the remote's HEAD names (ls-remote --symref)."""
    out = await _git("ls-remote", "--symref", "--", repo, "HEAD")
    for line in out.splitlines():
        if line.startswith("ref: refs/heads/"):
            return line.split("\t")[0].removeprefix("ref: refs/heads/")
    return None


KNOWN_ANSWERS = 4096  # of ancestry and signature checks: commits never change

_descends: set[tuple[str, str, str]] = set()
_asking: dict[tuple[str, str, str], asyncio.Future[bool]] = {}  # asked, not answered yet
_signatures: dict[tuple[str, Signers], str | None] = {}


async def is_ancestor(git_dir: str, old: str, new: str) -> bool:
    """Whether `new` descends from `old`; a yes is remembered (every deployment applied at
    `old` asks it of a new commit, most at the same moment: they share one `git
    merge-base`), a no is not (`new` may not be fetched yet)."""
    key = (git_dir, old, new)
    if key in _descends:
        return True
    asking = _asking.get(key)
    if asking is None:
        asking = _asking[key] = asyncio.ensure_future(_descends_from(key))
        asking.add_done_callback(lambda _: _asking.pop(key, None))
    return await asyncio.shield(asking)


async def _descends_from(key: tuple[str, str, str]) -> bool:
    git_dir, old, new = key
    try:
        await _git("merge-base", "--is-ancestor", old, new, cwd=git_dir)
    except GitError:
        return False
    if len(_descends) >= KNOWN_ANSWERS:
        _descends.clear()
    _descends.add(key)
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
    a Stalled condition. Asked once per commit, however many deployments it carries."""
    if (sha, signers) not in _signatures:
        if len(_signatures) >= KNOWN_ANSWERS:
            _signatures.clear()
        _signatures[(sha, signers)] = await _verify(git_dir, sha, signers)
    return _signatures[(sha, signers)]


async def _verify(git_dir: str, sha: str, signers: Signers) -> str | None:
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


def local_git_dir(repo: str) -> str:
    """The git dir of a local --repo (a work tree, a folder inside one, or a bare one)."""
    import git

    try:
        return str(git.Repo(repo, search_parent_directories=True).git_dir)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise UserError(f"--repo {repo}: not a Git repository") from None
