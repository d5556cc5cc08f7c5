"""Wrapper services (SPEC §2.5): `wrapper lock` may refuse a transition (nothing changes
then), and a stateful wrapper that changes machine moves its state through its own
`snapshot` and `restore`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import commit, make_repo, run_cli

pytestmark = pytest.mark.slow

WRAPPER = """#!/bin/sh
# a job queue: refuses to be taken down while busy; its state is one file
set -e
case "$1" in
  activate)   touch "$RECONCILER_STATE/active" ;;
  deactivate) rm -f "$RECONCILER_STATE/active" ;;
  health)     test -e "$RECONCILER_STATE/active" ;;
  lock)       if [ -e "$RECONCILER_STATE/busy" ]; then echo "a job is running" >&2; exit 1; fi ;;
  unlock)     ;;
  snapshot)   cp "$RECONCILER_STATE/queue" "$RECONCILER_SNAPSHOT" ;;
  restore)    cp "$RECONCILER_SNAPSHOT" "$RECONCILER_STATE/queue" ;;
esac
"""


def models(tmp_path: Path) -> Path:
    files = {
        "reconciler.yaml": "deployments:\n  jobs:\n    models: [models.yaml, where.yaml]\n",
        "models.yaml": (
            "machines:\n"
            "  m1: {deployment: {targetEnv: local, address: 127.0.0.1}}\n"
            "  m2: {deployment: {targetEnv: local, address: 127.0.0.1}}\n"
            "packages:\n  queue: {src: packages/queue}\n"
            "services:\n  queue: {package: queue, type: wrapper}\n"
        ),
        "where.yaml": "distribution:\n  queue: [m1]\n",
        "packages/queue/bin/wrapper": WRAPPER,
    }
    return make_repo(tmp_path / "models", files, programs=["packages/queue/bin/wrapper"])


def state(repo: Path, machine: str) -> Path:
    return repo / f".reconciler/machines/{machine}/deployments/jobs/state/queue"


def test_a_wrapper_refuses_its_lock_then_moves_its_own_state(tmp_path: Path) -> None:
    repo = models(tmp_path)
    first = run_cli("apply", "--yes", cwd=repo, timeout=120)
    assert first.returncode == 0, first.stderr
    (state(repo, "m1") / "queue").write_text("job-1\njob-2\n")
    (state(repo, "m1") / "busy").touch()
    commit(repo, {"where.yaml": "distribution:\n  queue: [m2]\n"}, "move the queue to m2")

    refused = run_cli("apply", "--yes", cwd=repo, timeout=120)
    assert refused.returncode == 1
    assert "queue@m1 refused its lock" in refused.stderr
    assert "a job is running" in refused.stderr
    assert (state(repo, "m1") / "active").exists()  # nothing changed
    assert not state(repo, "m2").exists()

    (state(repo, "m1") / "busy").unlink()
    moved = run_cli("apply", "--yes", cwd=repo, timeout=120)
    assert moved.returncode == 0, moved.stderr
    assert (state(repo, "m2") / "queue").read_text() == "job-1\njob-2\n"
    assert (state(repo, "m2") / "active").exists()
    assert not (state(repo, "m1") / "active").exists()
