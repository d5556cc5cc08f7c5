"""`reconciler init DIR`: a new models repository with a small working example, committed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from reconciler.errors import UserError

_FALLBACK_IDENTITY = {
    "GIT_AUTHOR_NAME": "reconciler init",
    "GIT_AUTHOR_EMAIL": "reconciler@localhost",
    "GIT_COMMITTER_NAME": "reconciler init",
    "GIT_COMMITTER_EMAIL": "reconciler@localhost",
}


def run(directory: Path, quiet: bool) -> int:
    if directory.exists() and not directory.is_dir():
        raise UserError(
            f"{directory}: exists and is not a folder; init needs a new or empty folder"
        )
    if directory.exists() and any(directory.iterdir()):
        raise UserError(f"{directory}: exists and is not empty; init needs a new or empty folder")
    template = resources.files("reconciler.scaffold") / "template"
    with resources.as_file(template) as src:
        shutil.copytree(src, directory, dirs_exist_ok=True)
    (directory / "gitignore").rename(directory / ".gitignore")
    _write_schemas(directory / "schemas")
    for exe in directory.glob("packages/*/bin/*"):
        exe.chmod(0o755)
    env = dict(os.environ)
    if not _git_identity_configured(directory):
        for key, value in _FALLBACK_IDENTITY.items():
            env.setdefault(key, value)
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["commit", "-q", "-m", "Models for reconciler (from reconciler init)"],
    ):
        done = subprocess.run(
            ["git", *args], cwd=directory, env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise UserError(f"git {args[0]} in {directory} failed: {done.stderr.strip()}")
    if not quiet:
        print(f"Created a models repository in {directory} (deployment `local`, committed).")
        print(f"Next: cd {directory} && reconciler validate && reconciler plan")
    return 0


def _write_schemas(folder: Path) -> None:
    """The schemas the files' `yaml-language-server` modelines name, of this version."""
    from reconciler.models.editor_schema import schema_for

    folder.mkdir()
    for target, name in (("model", "model"), ("reconciler.yaml", "reconciler")):
        text = json.dumps(schema_for(target), indent=2) + "\n"
        (folder / f"{name}.schema.json").write_text(text)


def _git_identity_configured(cwd: Path) -> bool:
    check = subprocess.run(["git", "config", "user.email"], cwd=cwd, capture_output=True)
    return check.returncode == 0
