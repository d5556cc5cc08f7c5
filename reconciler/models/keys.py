"""Keys come only from where the operator allows (SPEC §12).

A models author names a key's source; the operator decides where sources may be: files
inside one key folder (`--keys-dir`, `$RECONCILER_KEYS_DIR`) and environment variables
with one prefix (`--key-env-prefix`, `$RECONCILER_KEYS_ENV_PREFIX`, default
`RECONCILER_KEY_`). A key's *version* — a salted, truncated SHA-256 of its value — is
part of the desired state, so adding or changing a key is a planned change; the value
itself never leaves this module but to be uploaded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from reconciler.errors import Problem
from reconciler.models.merge import locate
from reconciler.models.schema import KeySpec, ModelDocument
from reconciler.models.yamlmarks import Marks

DEFAULT_ENV_PREFIX = "RECONCILER_KEY_"
KEYS_DIR_VARIABLE = "RECONCILER_KEYS_DIR"
ENV_PREFIX_VARIABLE = "RECONCILER_KEYS_ENV_PREFIX"  # not itself under the default prefix

Versions = dict[str, dict[str, str | None]]  # machine → key → version (None: not available)


@dataclass(frozen=True)
class KeyPolicy:
    """Where the operator lets keys come from; never set by the models."""

    folder: Path | None = None
    env_prefix: str = DEFAULT_ENV_PREFIX

    @classmethod
    def of(cls, keys_dir: str | None, env_prefix: str | None) -> KeyPolicy:
        """From the command line, else the environment."""
        folder = keys_dir or os.environ.get(KEYS_DIR_VARIABLE) or None
        prefix = env_prefix or os.environ.get(ENV_PREFIX_VARIABLE) or DEFAULT_ENV_PREFIX
        return cls(Path(folder).expanduser() if folder else None, prefix)


class KeyUnavailable(Exception):
    """The key's value cannot be read here (said in words, without the value)."""


def check_keys(
    doc: ModelDocument, marks: Marks, policy: KeyPolicy, deployment: str, default_file: str
) -> tuple[list[Problem], Versions]:
    """Problems with where keys come from, and the version of every key readable here."""
    problems: list[Problem] = []
    versions: Versions = {}
    for machine, m in doc.machines.items():
        for name, spec in m.deployment.keys.items():
            path = ("machines", machine, "deployment", "keys", name)
            wrong = source_problem(spec, policy)
            if wrong:
                field = (*path, "env" if spec.env is not None else "file")
                file, line = locate(marks, field) or (default_file, 0)
                problems.append(Problem(file, line, ".".join(field), wrong))
                continue
            try:
                value = read_key(spec, policy)
            except KeyUnavailable:
                version = None
            else:
                version = key_version(deployment, machine, name, value)
            versions.setdefault(machine, {})[name] = version
    return problems, versions


def source_problem(spec: KeySpec, policy: KeyPolicy) -> str | None:
    """What is wrong with a key's source under the operator's policy, if anything."""
    if spec.env is not None:
        prefix = policy.env_prefix
        if not spec.env.startswith(prefix) or spec.env == prefix:
            return (
                f"{spec.env} is not a variable the operator allows for keys: name one that "
                f"starts with {prefix} (the operator's --key-env-prefix)"
            )
        return None
    assert spec.file is not None
    rel = PurePosixPath(spec.file)
    if rel.is_absolute() or spec.file.startswith("~") or ".." in rel.parts:
        return (
            f"{spec.file!r} is not inside the operator's key folder: name a file relative to "
            "it (the operator's --keys-dir), without '..'"
        )
    if policy.folder is not None:
        folder = policy.folder.resolve()
        if not (folder / rel).resolve().is_relative_to(folder):
            return (
                f"{spec.file!r} is a link leading out of the operator's key folder; only files "
                "inside it can be keys"
            )
    return None


def read_key(spec: KeySpec, policy: KeyPolicy) -> bytes:
    """A key's value; raises KeyUnavailable saying why it cannot be read here."""
    wrong = source_problem(spec, policy)
    if wrong:
        raise KeyUnavailable(wrong)
    if spec.env is not None:
        value = os.environ.get(spec.env)
        if value is None:
            raise KeyUnavailable(f"environment variable {spec.env} is not set")
        return value.encode()
    assert spec.file is not None
    if policy.folder is None:
        raise KeyUnavailable(
            f"no key folder to read {spec.file} from: the operator names one with --keys-dir "
            f"or ${KEYS_DIR_VARIABLE}"
        )
    try:
        return (policy.folder.resolve() / spec.file).read_bytes()
    except OSError as e:
        raise KeyUnavailable(
            f"cannot read {spec.file} in the key folder: {e.strerror or e}"
        ) from None


def key_version(deployment: str, machine: str, name: str, value: bytes) -> str:
    """Changes exactly when the value does; salted by where the key goes, and short, so it
    tells nothing about the value that guessing could not."""
    salt = f"reconciler key\0{deployment}\0{machine}\0{name}\0".encode()
    return hashlib.sha256(salt + value).hexdigest()[:16]


def version_key(deployment: str, machine: str, name: str) -> str:
    """Where a key's version is kept among the recorded allocations."""
    return f"key-version/{deployment}/{machine}/{name}"


def versions_for(
    versions: Mapping[str, Mapping[str, str | None]],
    recorded: Mapping[str, str],
    deployment: str,
    machine: str,
    names: list[str],
) -> dict[str, str | None]:
    """Each key's version: read here, else as recorded (a plan made where the value is not
    available assumes it unchanged), else None."""
    here = versions.get(machine, {})
    return {
        n: here.get(n) or recorded.get(version_key(deployment, machine, n)) for n in sorted(names)
    }
