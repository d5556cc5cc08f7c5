"""Fixtures for end-to-end tests of the `reconciler` console script on real Git repos.

Every test runs the installed console script in a subprocess, on repositories created
in a temporary folder with a fixed author, committer and date, and with the user's git
configuration switched off, so results do not depend on the machine running them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

_NEXT_TO_PYTHON = Path(sys.executable).with_name("reconciler")
RECONCILER = str(_NEXT_TO_PYTHON) if _NEXT_TO_PYTHON.exists() else "reconciler"

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.test",
    "GIT_AUTHOR_DATE": "2024-01-02T03:04:05+00:00",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.test",
    "GIT_COMMITTER_DATE": "2024-01-02T03:04:05+00:00",
}


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for git and the CLI: no user/system git config, no colours, no
    inherited RECONCILER_STATE."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "RECONCILER_"))}
    env.update(GIT_IDENTITY)
    env.update(
        {
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }
    )
    env.update(extra)
    return env


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, env=clean_env(), capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def write_files(root: Path, files: Mapping[str, str | None]) -> None:
    """Write {relpath: text} under root; a value of None deletes the file."""
    for rel, text in files.items():
        path = root / rel
        if text is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def commit(repo: Path, files: Mapping[str, str | None], message: str = "change") -> str:
    """Write files into repo, commit everything, return the new commit's SHA."""
    write_files(repo, files)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def make_repo(path: Path, files: Mapping[str, str | None], branch: str = "main") -> Path:
    """A new Git repository at path holding files in one commit on `branch`."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", branch)
    commit(path, files, "initial models")
    return path


def run_cli(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the installed `reconciler` console script."""
    return subprocess.run(
        [RECONCILER, *args],
        cwd=cwd,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_parallel(
    *commands: list[str], cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 60
) -> list[subprocess.CompletedProcess[str]]:
    """Run several independent CLI calls at once (each costs ~0.3 s of start-up)."""
    procs = [
        (
            args,
            subprocess.Popen(
                [RECONCILER, *args],
                cwd=cwd,
                env=clean_env(**(env or {})),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for args in commands
    ]
    results = []
    for args, proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess([RECONCILER, *args], proc.returncode, out, err))
    return results


def run_json(*args: str, cwd: Path, **kw: Any) -> Any:
    done = run_cli(*args, "--format", "json", cwd=cwd, **kw)
    assert done.returncode in (0, 2), done.stderr
    return json.loads(done.stdout)


def no_state_db(cwd: Path) -> bool:
    """No state DB at the default place (.reconciler/state.db beside where we ran)."""
    return not (cwd / ".reconciler" / "state.db").exists()


def assert_clean_failure(done: subprocess.CompletedProcess[str]) -> None:
    """Exit 1 with a message for people: no traceback, nothing on stdout."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip(), "an error must say what is wrong"


def problem_lines(stderr: str) -> list[str]:
    """The `file:line: key: message` lines of an InvalidModels report (not the summary)."""
    return [
        line
        for line in stderr.splitlines()
        if line and "nothing was changed" not in line and not line.startswith(" ")
    ]


# --- model builders ------------------------------------------------------------------

SCRIPT = "#!/bin/sh\necho hello\n"


def basic_files(**overrides: str | None) -> dict[str, str | None]:
    """A small valid deployment `app`: two local machines, five services.

    db (sqlite-database) on m1; api (port 8100, dependsOn db) on m1; web (port auto,
    dependsOn api) on m1 and m2; cron (connectsTo web) on m2; each with its own package.
    """
    files: dict[str, str | None] = {
        "reconciler.yaml": """\
            deployments:
              app:
                models: [network.yaml, services.yaml, distribution.yaml]
            """,
        "network.yaml": """\
            machines:
              m1:
                deployment: {targetEnv: local}
              m2:
                deployment: {targetEnv: local}
            """,
        "services.yaml": """\
            packages:
              db: {src: pkgs/db}
              api: {src: pkgs/api}
              web: {src: pkgs/web}
              tool: {src: pkgs/tool}
            services:
              db:
                package: db
                type: sqlite-database
              api:
                package: api
                command: bin/api
                port: 8100
                dependsOn: [db]
              web:
                package: web
                command: bin/web
                port: auto
                dependsOn: [api]
              cron:
                package: tool
                command: bin/tool
                connectsTo: [web]
            """,
        "distribution.yaml": """\
            distribution:
              db: [m1]
              api: [m1]
              web: [m1, m2]
              cron: [m2]
            """,
        "pkgs/db/schema.sql": "CREATE TABLE t (x INTEGER);\n",
        "pkgs/api/bin/api": SCRIPT,
        "pkgs/web/bin/web": SCRIPT,
        "pkgs/tool/bin/tool": SCRIPT,
    }
    files = {k: textwrap.dedent(v) if v else v for k, v in files.items()}
    files.update(overrides)
    return files


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture
def repo_factory(tmp_path: Path) -> Callable[..., Path]:
    """repo_factory(files, name="models") → a new committed repository in tmp_path."""
    counter = iter(range(1_000_000))

    def factory(files: Mapping[str, str | None], name: str | None = None) -> Path:
        return make_repo(tmp_path / (name or f"repo{next(counter)}"), files)

    return factory


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli


@pytest.fixture(scope="session")
def has_dot() -> bool:
    return shutil.which("dot") is not None
