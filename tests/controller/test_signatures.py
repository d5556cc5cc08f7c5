"""Signed-commit checks with real keys and real commits (ssh-keygen, gpg, git): a refused
commit says what is wrong — not signed, signed by a key no principal matches, signed by a
GPG key the keyring lacks, changed after signing — and what would be right."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.controller.git import Signers, check_signature
from tests.support import clean_env, make_repo


@dataclass
class Keys:
    repo: Path
    allowed_signers: Path  # lists `allowed`, not `stranger`
    allowed: Path
    stranger: Path
    gnupg: Path  # a home with two secret keys: `gpg_ok` (exported) and `gpg_stranger`
    keyring: Path  # the public key of gpg_ok only
    gpg_ok: str
    gpg_stranger: str

    def env(self) -> dict[str, str]:
        return clean_env(GNUPGHOME=str(self.gnupg))

    def git(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            ["git", *args],
            cwd=self.repo,
            env=self.env(),
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    def commit(self, message: str, *config: str) -> str:
        options = [o for c in config for o in ("-c", c)]
        signing = ["-S"] if config else []
        self.git(*options, "commit", "-q", "--allow-empty", *signing, "-m", message)
        return self.git("rev-parse", "HEAD")

    def ssh_commit(self, key: Path) -> str:
        return self.commit("ssh-signed", "gpg.format=ssh", f"user.signingkey={key}")

    def gpg_commit(self, fingerprint: str) -> str:
        return self.commit("gpg-signed", f"user.signingkey={fingerprint}")

    def tampered(self, sha: str) -> str:
        """The same commit and signature with another message: what a forger could make."""
        raw = self.git("cat-file", "commit", sha) + "\n"
        forged = raw.replace("-signed\n", "-signed, then changed\n")
        return self.git("hash-object", "-t", "commit", "-w", "--stdin", stdin=forged)


def fingerprint_of(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True)
    return out.stdout.split()[1]  # "256 SHA256:… comment (ED25519)"


def gpg(home: Path, *args: str) -> str:
    done = subprocess.run(
        ["gpg", "--batch", "--homedir", str(home), *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def gpg_key(home: Path, uid: str) -> str:
    gpg(home, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
    listed = gpg(home, "--with-colons", "--list-keys", uid)
    return next(ln.split(":")[9] for ln in listed.splitlines() if ln.startswith("fpr:"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    root = tmp_path_factory.mktemp("signatures")
    for name in ("allowed", "stranger"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True
        )
    allowed_signers = root / "allowed_signers"
    allowed_signers.write_text(f"author@example.test {(root / 'allowed.pub').read_text()}")
    gnupg = root / "gnupg"
    gnupg.mkdir(mode=0o700)
    ok, stranger = gpg_key(gnupg, "Ok <ok@example.test>"), gpg_key(gnupg, "No <no@x.test>")
    keyring = root / "keyring.gpg"
    keyring.write_bytes(
        subprocess.run(
            ["gpg", "--batch", "--homedir", str(gnupg), "--export", ok],
            capture_output=True,
            check=True,
        ).stdout
    )
    repo = make_repo(root / "models", {"README": "models\n"})
    try:
        yield Keys(
            repo, allowed_signers, root / "allowed", root / "stranger", gnupg, keyring, ok, stranger
        )
    finally:
        subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "all"], check=False)


def check(keys: Keys, sha: str, signers: Signers) -> str | None:
    return asyncio.run(check_signature(str(keys.repo / ".git"), sha, signers))


def test_an_allowed_ssh_key_and_a_gpg_key_in_the_keyring_pass(keys: Keys) -> None:
    assert check(keys, keys.ssh_commit(keys.allowed), Signers(keys.allowed_signers)) is None
    assert check(keys, keys.gpg_commit(keys.gpg_ok), Signers(gpg_keyring=keys.keyring)) is None
    both = Signers(keys.allowed_signers, keys.keyring)
    assert check(keys, keys.gpg_commit(keys.gpg_ok), both) is None


def test_an_unsigned_commit(keys: Keys) -> None:
    sha = keys.commit("unsigned")
    assert check(keys, sha, Signers(keys.allowed_signers)) == (
        f"commit {sha[:12]} is not signed; "
        f"sign it with a key listed in --allowed-signers {keys.allowed_signers}"
    )
    both = check(keys, sha, Signers(keys.allowed_signers, keys.keyring))
    assert both is not None and both.endswith(
        f"--allowed-signers {keys.allowed_signers} or --gpg-keyring {keys.keyring}"
    )


def test_an_ssh_key_no_principal_matches(keys: Keys) -> None:
    sha = keys.ssh_commit(keys.stranger)
    fingerprint = fingerprint_of(keys.stranger.with_suffix(".pub"))
    assert check(keys, sha, Signers(keys.allowed_signers)) == (
        f"commit {sha[:12]} is signed with ED25519 key {fingerprint}, which matches no "
        f"principal in --allowed-signers {keys.allowed_signers}; add it there, or sign it "
        "with a key listed there"
    )


def test_a_gpg_key_missing_from_the_keyring(keys: Keys) -> None:
    sha = keys.gpg_commit(keys.gpg_stranger)
    assert check(keys, sha, Signers(gpg_keyring=keys.keyring)) == (
        f"commit {sha[:12]} is signed with GPG key {keys.gpg_stranger}, which is not in "
        f"--gpg-keyring {keys.keyring}; add its public key there, or sign it with a key "
        "that is"
    )


def test_with_both_kinds_allowed_the_other_kind_is_named_too(keys: Keys) -> None:
    why = check(keys, keys.ssh_commit(keys.stranger), Signers(keys.allowed_signers, keys.keyring))
    assert why is not None and why.endswith(
        f"add it there, or sign it with a key listed in --allowed-signers "
        f"{keys.allowed_signers} or --gpg-keyring {keys.keyring}"
    )


def test_a_signature_of_a_kind_nobody_allowed(keys: Keys) -> None:
    ssh = keys.ssh_commit(keys.allowed)
    fingerprint = fingerprint_of(keys.allowed.with_suffix(".pub"))
    assert check(keys, ssh, Signers(gpg_keyring=keys.keyring)) == (
        f"commit {ssh[:12]} is signed with ED25519 key {fingerprint}, but SSH signatures "
        f"are not accepted; sign it with a key listed in --gpg-keyring {keys.keyring}"
    )
    signed = keys.gpg_commit(keys.gpg_ok)
    why = check(keys, signed, Signers(keys.allowed_signers))
    assert why is not None
    assert f"is signed with GPG key {keys.gpg_ok}, but GPG signatures are not accepted" in why


def test_a_commit_changed_after_signing(keys: Keys) -> None:
    forged = keys.tampered(keys.gpg_commit(keys.gpg_ok))
    why = check(keys, forged, Signers(gpg_keyring=keys.keyring))
    assert why is not None
    assert re.fullmatch(
        rf"commit {forged[:12]}: its signature by GPG key [0-9A-F]+ does not match the "
        r"commit \(changed after signing\?\); sign it with a key listed in --gpg-keyring .*",
        why,
    ), why
    ssh_forged = keys.tampered(keys.ssh_commit(keys.allowed))
    why = check(keys, ssh_forged, Signers(keys.allowed_signers))
    assert why is not None and why.startswith(f"commit {ssh_forged[:12]}: its signature by ")
    assert "does not verify" in why and "sign it with a key listed in" in why


def test_no_message_is_gits_raw_output(keys: Keys) -> None:
    signers = Signers(keys.allowed_signers, keys.keyring)
    for sha in (keys.commit("plain"), keys.ssh_commit(keys.stranger)):
        why = check(keys, sha, signers) or ""
        assert not why.startswith(("git ", "Good ", "gpg:")) and "git -c" not in why, why
    assert os.environ.get("GNUPGHOME") != str(keys.gnupg)  # the test's keys stay its own
