"""Inputs found in review: control characters in paths, deployment names, and
credentials in repository URLs never reaching messages."""

from __future__ import annotations

from pathlib import Path

from tests.support import make_repo, run_cli

MODELS = {
    "reconciler.yaml": "deployments:\n  lab:\n    models: [models.yaml]\n",
    "models.yaml": "machines:\n  m1: {deployment: {targetEnv: local}}\n"
    'packages:\n  app: {src: "pkgs/a\\nb"}\n',
    "pkgs/app/x": "x\n",
}


def test_a_src_with_a_control_character_is_refused_with_its_line(tmp_path: Path) -> None:
    done = run_cli("validate", cwd=make_repo(tmp_path / "m", MODELS))
    assert done.returncode == 1
    assert "models.yaml:4: packages.app.src: " in done.stderr
    assert "control character" in done.stderr
    assert "Traceback" not in done.stderr


def test_deployment_names_follow_their_own_rule(tmp_path: Path) -> None:
    files = {**MODELS, "reconciler.yaml": "deployments:\n  lo.cal:\n    models: [models.yaml]\n"}
    done = run_cli("validate", cwd=make_repo(tmp_path / "m", files))
    assert done.returncode == 1
    assert "reconciler.yaml:2: deployments.lo.cal: invalid deployment name" in done.stderr


def test_credentials_in_a_repository_url_stay_out_of_messages(tmp_path: Path) -> None:
    url = "https://deploy:ghp_SECRETTOKEN@127.0.0.1:1/models.git"
    done = run_cli("--repo", url, "validate", cwd=tmp_path)
    assert done.returncode == 1
    assert "cannot fetch" in done.stderr
    assert "SECRETTOKEN" not in done.stderr
    assert "deploy:" not in done.stderr
