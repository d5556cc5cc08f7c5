"""`reconciler validate`: every deployment, read from the commit (or the work tree)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import (
    git,
    make_repo,
    run_cli,
)

from .conftest import (
    assert_clean_failure,
    basic_files,
    no_state_db,
    problem_lines,
)

TWO_DEPLOYMENTS = """\
deployments:
  app:
    models: [network.yaml, services.yaml, distribution.yaml]
  staging:
    models: [network.yaml, services.yaml, dist-staging.yaml]
"""

BROKEN_STAGING = """\
distribution:
  db: [m1]
  api: [m1]
  web: [m2]
  cron: [m9]
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("validate") / "models", basic_files())


@pytest.fixture(scope="module")
def two_deployments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = basic_files(**{"reconciler.yaml": TWO_DEPLOYMENTS, "dist-staging.yaml": BROKEN_STAGING})
    return make_repo(tmp_path_factory.mktemp("validate2") / "models", files)


def test_valid_repository(repo: Path) -> None:
    done = run_cli("validate", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "app: valid (2 machines, 4 services, 5 instances, 4 packages)\n"
    assert done.stderr == ""
    assert no_state_db(repo)
    assert not (repo / ".reconciler").exists()


def test_validate_json_shape(repo: Path) -> None:
    done = run_cli("validate", "--format", "json", cwd=repo)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == {
        "valid": True,
        "deployments": [
            {
                "name": "app",
                "valid": True,
                "revision": git(repo, "rev-parse", "HEAD"),
                "machines": 2,
                "services": 4,
                "instances": 5,
                "packages": 4,
            }
        ],
        "problems": [],
    }


def test_uncommitted_edits_count_only_with_worktree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "models", basic_files())
    broken = "machines:\n  m1: {deployment: {targetEnv: local}}\n  m1: {}\n"
    (repo / "network.yaml").write_text(broken)
    git(repo, "add", "network.yaml")  # even staged, it is not committed
    (repo / "notes.yaml").write_text("untracked: [\n")
    index_before = git(repo, "diff", "--cached", "--name-status")
    status_before = git(repo, "status", "--porcelain")

    done = run_cli("validate", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("app: valid")

    done = run_cli("validate", "--worktree", cwd=repo)
    assert_clean_failure(done)
    assert problem_lines(done.stderr) == [
        "network.yaml:3: machines.m1: duplicate key (first defined on line 2); "
        "keep only one of them"
    ]
    assert done.stderr.endswith("1 problem in app; nothing was changed.\n")
    # --worktree builds its tree in a private index: the user's index and files stay put
    assert git(repo, "diff", "--cached", "--name-status") == index_before
    assert git(repo, "status", "--porcelain") == status_before


def test_plan_worktree_reads_uncommitted_files(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "models", basic_files())
    (repo / "distribution.yaml").write_text("distribution:\n  db: [m1]\n")
    done = run_cli("plan", "--format", "json", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["instances"]) == 5
    done = run_cli("plan", "--worktree", "--format", "json", cwd=repo)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["revision"] is None
    assert [i["key"] for i in plan["instances"]] == ["db@m1"]


def test_all_deployments_are_validated_together(two_deployments: Path) -> None:
    done = run_cli("validate", cwd=two_deployments)
    assert_clean_failure(done)
    assert problem_lines(done.stderr) == [
        "dist-staging.yaml:5: distribution.cron[0]: unknown machine 'm9'; known: m1, m2"
    ]
    assert done.stderr.endswith("1 problem in staging; nothing was changed.\n")
    assert done.stdout == ""


def test_all_deployments_json(two_deployments: Path) -> None:
    done = run_cli("validate", "--format", "json", cwd=two_deployments)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["valid"] is False
    assert [(d["name"], d["valid"]) for d in report["deployments"]] == [
        ("app", True),
        ("staging", False),
    ]
    assert report["problems"] == [
        {
            "file": "dist-staging.yaml",
            "line": 5,
            "key": "distribution.cron[0]",
            "message": "unknown machine 'm9'; known: m1, m2",
        }
    ]


def test_validate_one_deployment_with_d(two_deployments: Path) -> None:
    done = run_cli("validate", "-d", "app", cwd=two_deployments)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("app: valid")
    assert "staging" not in done.stdout


def test_validate_outside_a_git_repository(tmp_path: Path) -> None:
    done = run_cli("validate", cwd=tmp_path)
    assert_clean_failure(done)
    assert done.stderr.startswith("error: .: not a Git repository; models are read from commits")
