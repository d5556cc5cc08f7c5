"""Builds through `apply --copy-only` on local machines: once per store hash, atomic,
and a failed build names its package, shows its output and leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import commit, make_repo, run_cli

MODELS = {
    "reconciler.yaml": "deployments:\n  lab:\n    models: [models.yaml]\n",
    "models.yaml": """\
machines:
  m1: {deployment: {targetEnv: local}}
packages:
  app: {src: app, build: "mkdir -p $out/bin && cp $src/run.sh $out/bin/app && echo built"}
  broken: {src: app, build: "echo compiling; echo 'error: no such symbol' >&2; exit 3"}
  plain: {src: app}
services:
  app: {package: app, command: bin/app}
distribution:
  app: [m1]
""",
    "app/run.sh": "#!/bin/sh\necho app\n",
}


AGENT = "-reconciler-agent"  # shipped to every machine beside the closures


def store_entries(repo: Path) -> set[str]:
    store = repo / ".reconciler" / "store"
    return {p.name for p in store.iterdir() if not p.name.startswith(".")} - {
        p.name for p in store.glob(f"*{AGENT}")
    }


def test_a_build_command_runs_once_per_store_hash(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "models", MODELS)
    first = run_cli("-d", "lab", "apply", "--copy-only", "--format", "json", cwd=repo)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["built"] == ["app"]
    (path,) = store_entries(repo)
    assert (
        (repo / ".reconciler/machines/m1/store" / path / "bin/app")
        .read_text()
        .endswith("echo app\n")
    )
    again = run_cli("-d", "lab", "apply", "--copy-only", "--format", "json", cwd=repo)
    assert json.loads(again.stdout)["built"] == []


def test_a_failed_build_names_the_package_shows_its_output_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "models", MODELS)
    commit(
        repo, {"models.yaml": MODELS["models.yaml"].replace("package: app,", "package: broken,")}
    )
    done = run_cli("-d", "lab", "apply", "--copy-only", cwd=repo)
    assert done.returncode == 1
    assert "build of package broken failed" in done.stderr
    assert "exited with status 3" in done.stderr
    assert "| error: no such symbol" in done.stderr
    assert "Traceback" not in done.stderr
    assert store_entries(repo) == set()
    assert not any((repo / ".reconciler/store/.tmp").iterdir())
    assert not (repo / ".reconciler/machines/m1/store").exists()


def test_a_build_that_embeds_its_out_path_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "models", MODELS)
    bad = MODELS["models.yaml"].replace(
        "cp $src/run.sh $out/bin/app", 'echo \\"cd $out\\" > $out/bin/app'
    )
    commit(repo, {"models.yaml": bad})
    done = run_cli("-d", "lab", "apply", "--copy-only", cwd=repo)
    assert done.returncode == 1, done.stdout
    assert "embeds its build-time $out path (in bin/app)" in done.stderr
    assert store_entries(repo) == set()


def test_a_damaged_path_on_a_machine_is_sent_again_and_replaced(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "models", MODELS)
    run_cli("-d", "lab", "apply", "--copy-only", cwd=repo)
    target = repo / ".reconciler/machines/m1/store"
    (path,) = [
        p for p in target.iterdir() if not (p.name.startswith(".") or p.name.endswith(AGENT))
    ]
    (path / "bin").chmod(0o755)
    (path / "bin/app").chmod(0o644)
    (path / "bin/app").write_text("tampered\n")
    meta = target / ".meta" / f"{path.name}.json"
    meta.write_text(meta.read_text().replace("sha256:", "sha256:0"))
    again = run_cli("-d", "lab", "apply", "--copy-only", "--format", "json", cwd=repo)
    assert json.loads(again.stdout)["transfers"]["m1"]["sent"] == [path.name]
    assert (path / "bin/app").read_text().endswith("echo app\n")
