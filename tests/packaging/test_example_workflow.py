"""example-repo/.github/workflows/plan.yml, the pull-request review workflow: it is a
well-formed GitHub Actions workflow, and its plan step, run as GitHub would run it (bash,
in a clone whose origin has the base branch, HEAD the pull request), writes the comment
that it posts: the markdown plan of each deployment, or why the plan failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example-repo"
WORKFLOW = EXAMPLE / ".github" / "workflows" / "plan.yml"
MARKER = "<!-- reconciler-plan -->"

GIT_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def workflow() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return doc


def steps() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = workflow()["jobs"]["plan"]["steps"]
    return found


def test_workflow_shape() -> None:
    doc = workflow()
    # PyYAML reads the key `on` as True (YAML 1.1); GitHub reads it as "on".
    assert "pull_request" in doc[True]
    assert doc["permissions"] == {"contents": "read", "pull-requests": "write"}
    checkout = next(s for s in steps() if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0, "plan --against needs the base commit"
    plan = next(s for s in steps() if s.get("id") == "plan")
    assert plan["env"]["BASE"] == "${{ github.base_ref }}"
    assert 'plan --against "origin/$BASE" --format markdown' in plan["run"]
    assert "--repo ." in plan["run"]
    post = next(s for s in steps() if "gh pr comment" in s.get("run", ""))
    assert post["env"]["GH_TOKEN"] == "${{ github.token }}"
    assert MARKER in post["run"]
    assert "pip install reconciler\n" not in WORKFLOW.read_text(), "PyPI's reconciler is another"


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, env={**os.environ, **GIT_ENV}
    )


@pytest.fixture
def pull_request(tmp_path: Path) -> Path:
    """A clone of a models repository (example-repo) on a pull-request branch."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    origin = tmp_path / "origin"
    shutil.copytree(EXAMPLE, origin, ignore=shutil.ignore_patterns(".reconciler", "__pycache__"))
    git(origin, "init", "-q", "-b", "main")
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "base")
    clone = tmp_path / "pr"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    git(clone, "checkout", "-q", "-b", "move-staff")
    return clone


def run_plan_step(clone: Path, deployments: str) -> tuple[subprocess.CompletedProcess[str], str]:
    plan = next(s for s in steps() if s.get("id") == "plan")
    env = {
        **os.environ,
        **GIT_ENV,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DEPLOYMENTS": deployments,
        "BASE": "main",
        "GITHUB_OUTPUT": str(clone.parent / "output"),
        "GITHUB_STEP_SUMMARY": str(clone.parent / "summary"),
        "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
        "GITHUB_WORKFLOW": "reconciler plan",
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "org/models",
        "GITHUB_RUN_ID": "1",
    }
    # GitHub runs `run:` scripts with `bash --noprofile --norc -eo pipefail {0}`.
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", plan["run"]],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, (clone.parent / "output").read_text() if done.returncode == 0 else ""


def test_plan_step_writes_the_comment(pull_request: Path) -> None:
    (pull_request / "distribution.yaml").write_text(
        (pull_request / "distribution-moved.yaml").read_text()
    )
    git(pull_request, "commit", "-q", "-am", "Move the staff service to test2")
    done, output = run_plan_step(pull_request, "local local-moved")
    assert done.returncode == 0, done.stderr
    assert "failed=0" in output
    comment = (pull_request / "comment.md").read_text()
    assert comment.startswith(MARKER + "\n")
    assert "### Reconciler plan for deployment `local`" in comment
    assert "`staff-service@test2` | activate" in comment
    assert "### Reconciler plan for deployment `local-moved`" in comment
    assert "against `origin/main`" in comment
    assert comment in (pull_request.parent / "summary").read_text()


def test_plan_step_reports_invalid_models(pull_request: Path) -> None:
    services = pull_request / "services.yaml"
    services.write_text(services.read_text() + "\nbogusKey: 1\n")
    git(pull_request, "commit", "-q", "-am", "Break the models")
    done, output = run_plan_step(pull_request, "local")
    assert done.returncode == 0, done.stderr  # the comment is posted; a later step fails
    assert "failed=1" in output
    comment = (pull_request / "comment.md").read_text()
    assert "### Reconciler plan for deployment `local`: failed" in comment
    assert "services.yaml:" in comment and "bogusKey" in comment
