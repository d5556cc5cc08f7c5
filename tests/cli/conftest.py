"""Fixtures for end-to-end tests of the `reconciler` console script on real Git repos.

Every test runs the installed console script in a subprocess, on repositories created
in a temporary folder with a fixed author, committer and date, and with the user's git
configuration switched off, so results do not depend on the machine running them.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from tests.support import (
    make_repo,
    run_cli,
)


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
