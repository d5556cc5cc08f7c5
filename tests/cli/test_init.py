"""`reconciler init DIR`: a committed, working models repository, or no change at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import (
    git,
    run_cli,
)

from .conftest import (
    assert_clean_failure,
)


@pytest.fixture(scope="module")
def initialized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`reconciler init models` run once; (the new repository, init's stdout)."""
    parent = tmp_path_factory.mktemp("init")
    done = run_cli("init", "models", cwd=parent)
    assert done.returncode == 0, done.stderr
    return parent / "models", done.stdout


def test_init_creates_a_committed_repository(initialized: tuple[Path, str]) -> None:
    repo, stdout = initialized
    assert "Created a models repository in models" in stdout
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert len(git(repo, "log", "--format=%H").splitlines()) == 1
    assert git(repo, "status", "--porcelain") == "", "init leaves nothing uncommitted"
    tracked = git(repo, "ls-files").splitlines()
    assert "reconciler.yaml" in tracked
    assert ".gitignore" in tracked
    assert ".reconciler/" in (repo / ".gitignore").read_text().splitlines()


def test_init_commits_package_scripts_executable(initialized: tuple[Path, str]) -> None:
    repo, _ = initialized
    modes = {
        line.split("\t")[1]: line.split()[0]
        for line in git(repo, "ls-files", "-s", "packages").splitlines()
    }
    scripts = [path for path in modes if "/bin/" in path]
    assert scripts, modes
    assert all(modes[path] == "100755" for path in scripts), modes


def test_validate_and_plan_succeed_in_a_new_repository(initialized: tuple[Path, str]) -> None:
    repo, _ = initialized
    done = run_cli("validate", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("local: valid (")
    done = run_cli("plan", "--format", "json", cwd=repo)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["deployment"] == "local"
    assert plan["revision"] == git(repo, "rev-parse", "HEAD")
    assert plan["summary"]["machinesToAdd"] >= 1
    assert plan["summary"]["toActivate"] >= 1
    assert {i["action"] for i in plan["instances"]} == {"activate"}
    assert git(repo, "status", "--porcelain") == ""


def test_init_honours_the_git_identity_from_the_environment(
    initialized: tuple[Path, str],
) -> None:
    repo, _ = initialized
    who = git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>")
    assert who == "Test Author <author@example.test>|Test Committer <committer@example.test>"


def test_init_into_a_non_empty_folder_fails_and_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine\n")
    done = run_cli("init", "busy", cwd=tmp_path)
    assert_clean_failure(done)
    assert done.stderr == "error: busy: exists and is not empty; init needs a new or empty folder\n"
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    assert (target / "notes.txt").read_text() == "mine\n"


def test_init_creates_missing_parent_folders_quietly(tmp_path: Path) -> None:
    done = run_cli("init", "-q", "a/b/models", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    repo = tmp_path / "a" / "b" / "models"
    assert (repo / "reconciler.yaml").is_file()
    assert git(repo, "status", "--porcelain") == ""


def test_init_onto_an_existing_file_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x\n")
    done = run_cli("init", "taken", cwd=tmp_path)
    assert_clean_failure(done)
    assert (tmp_path / "taken").read_text() == "x\n"


def test_init_without_a_folder_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("init", cwd=tmp_path)
    assert_clean_failure(result)
    assert "Missing argument" in result.stderr
    assert list(tmp_path.iterdir()) == []
