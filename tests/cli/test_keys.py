"""Keys come only from where the operator allows, and are part of the desired state
(SPEC §12, issue 13 items 1 and 2): files inside the operator's key folder, variables
under the operator's prefix; adding or changing a key is a planned change, also in
`plan --against`; the value never appears."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support import commit, git, make_repo, run_cli

from .conftest import assert_clean_failure, problem_lines

CONFIG = "deployments:\n  app:\n    models: [models.yaml]\n"
MODELS = """\
machines:
  m1:
    deployment:
      targetEnv: local
packages:
  tool: {src: pkgs/tool}
services:
  tool: {package: tool, type: package}
distribution:
  tool: [m1]
"""
SECRET = "k3y-value-5e2a91"


def with_key(source: str) -> str:
    """MODELS with one key on m1, on line 6."""
    return MODELS.replace(
        "      targetEnv: local\n", f"      targetEnv: local\n      keys:\n        tok: {source}\n"
    )


def repo_with(tmp_path: Path, models: str) -> Path:
    files = {"reconciler.yaml": CONFIG, "models.yaml": models, "pkgs/tool/README": "tool\n"}
    return make_repo(tmp_path / "models", files)


def problems_of(repo: Path, *args: str, env: dict[str, str] | None = None) -> list[str]:
    done = run_cli(*args, "validate", cwd=repo, env=env)
    assert_clean_failure(done)
    return problem_lines(done.stderr)


@pytest.mark.parametrize("name", ["STAFF_TOKEN", "AWS_SECRET_ACCESS_KEY", "RECONCILER_KEY_"])
def test_a_variable_outside_the_operators_prefix_is_refused(tmp_path: Path, name: str) -> None:
    repo = repo_with(tmp_path, with_key(f"{{env: {name}}}"))
    assert problems_of(repo, env={name: "x"}) == [
        f"models.yaml:6: machines.m1.deployment.keys.tok.env: {name} is not a variable the "
        "operator allows for keys: name one that starts with RECONCILER_KEY_ (the operator's "
        "--key-env-prefix)"
    ]


def test_the_operator_chooses_the_prefix(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, with_key("{env: STAFF_TOKEN}"))
    assert run_cli("--key-env-prefix", "STAFF_", "validate", cwd=repo).returncode == 0
    env = {"RECONCILER_KEYS_ENV_PREFIX": "STAFF_"}
    assert run_cli("validate", cwd=repo, env=env).returncode == 0
    [problem] = problems_of(repo, "--key-env-prefix", "OTHER_")
    assert "starts with OTHER_" in problem


@pytest.mark.parametrize("path", ["/etc/shadow", "../state.db", "sub/../../x", "~/.ssh/id_rsa"])
def test_a_file_outside_the_key_folder_is_refused(tmp_path: Path, path: str) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    repo = repo_with(tmp_path, with_key(f"{{file: '{path}'}}"))
    for args, env in ((("--keys-dir", str(keys)), None), ((), None)):
        assert problems_of(repo, *args, env=env) == [
            f"models.yaml:6: machines.m1.deployment.keys.tok.file: {path!r} is not inside the "
            "operator's key folder: name a file relative to it (the operator's --keys-dir), "
            "without '..'"
        ]


def test_a_link_leading_out_of_the_key_folder_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    (keys / "sub").mkdir(parents=True)
    (tmp_path / "outside").write_text("not a key\n")
    os.symlink(tmp_path / "outside", keys / "leak")
    os.symlink("..", keys / "sub" / "up")
    os.symlink(tmp_path, keys / "out")
    (keys / "tls.pem").write_text("a key\n")
    for name in ("leak", "sub/up/leak", "out/outside"):
        repo = repo_with(tmp_path / name.replace("/", "-"), with_key(f"{{file: {name}}}"))
        env = {"RECONCILER_KEYS_DIR": str(keys)}
        problems = problems_of(repo, env=env)
        assert problems == [
            f"models.yaml:6: machines.m1.deployment.keys.tok.file: {name!r} is a link leading "
            "out of the operator's key folder; only files inside it can be keys"
        ], name
    for name in ("tls.pem", "sub/up/tls.pem"):  # links that stay inside are fine
        repo = repo_with(tmp_path / "fine" / name, with_key(f"{{file: {name}}}"))
        assert run_cli("--keys-dir", str(keys), "validate", cwd=repo).returncode == 0


def test_a_file_key_needs_the_operators_key_folder_to_be_applied(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, with_key("{file: tls.pem}"))
    assert run_cli("validate", cwd=repo).returncode == 0  # reviewable without the value
    done = run_cli("apply", "--yes", cwd=repo)
    assert_clean_failure(done)
    assert [line for line in done.stderr.splitlines() if line.startswith("models")] == [
        "models.yaml:6: machines.m1.deployment.keys.tok: no key folder to read tls.pem from: "
        "the operator names one with --keys-dir or $RECONCILER_KEYS_DIR"
    ]


def changes(repo: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, list[str]]:
    """instance → why it changes, from `plan --format json [args]`."""
    done = run_cli("plan", "--format", "json", *args, cwd=repo, env=env)
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    plan = json.loads(done.stdout)
    return {c["key"]: c["reasons"] for c in plan["instances"] if c["action"] != "keep"}


def test_adding_a_key_is_a_planned_change_also_against_a_base(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, MODELS)
    base = git(repo, "rev-parse", "HEAD")
    commit(repo, {"models.yaml": with_key("{env: RECONCILER_KEY_TOK}")}, "a key")
    added = {"tool@m1": ["key tok added"]}
    assert changes(repo, "--against", base) == added  # the value is not available here
    env = {"RECONCILER_KEY_TOK": SECRET}
    assert changes(repo, "--against", base, env=env) == added
    head = git(repo, "rev-parse", "HEAD")
    assert changes(repo, "--against", head, env=env) == {}  # a value is not in a commit


def test_a_changed_value_is_a_planned_change_and_the_value_never_appears(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, MODELS)
    apply = run_cli("apply", "--yes", cwd=repo)
    assert apply.returncode == 0, apply.stderr
    commit(repo, {"models.yaml": with_key("{env: RECONCILER_KEY_TOK}")}, "a key")
    env = {"RECONCILER_KEY_TOK": SECRET}
    assert changes(repo, env=env) == {"tool@m1": ["key tok added"]}
    apply = run_cli("apply", "--yes", cwd=repo, env=env)
    assert apply.returncode == 0, apply.stderr
    assert changes(repo, env=env) == {}
    assert changes(repo) == {}  # where the value is not available: assumed unchanged
    assert changes(repo, env={"RECONCILER_KEY_TOK": SECRET + "2"}) == {
        "tool@m1": ["key tok changed"]
    }
    [uploaded] = repo.glob(".reconciler/machines/m1/deployments/app/keys/tok")
    assert uploaded.read_text() == SECRET
    for path in (repo / ".reconciler").rglob("*"):
        if path.is_file() and path != uploaded:
            assert SECRET.encode() not in path.read_bytes(), path
