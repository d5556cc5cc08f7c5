"""Applies of different deployments run at the same time on one SQLite state (SPEC §11):
none waits for another, none is refused, and the addresses they allocate never collide;
two attempts on the same deployment never overlap."""

from __future__ import annotations

import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    commit,
    http_service,
    kill_instances,
    make_repo,
    run_cli,
    run_parallel,
)

pytestmark = pytest.mark.slow

DEPLOYMENTS = [f"d{i}" for i in range(4)]

MODELS = {
    # every deployment reads the same models: each gets its own machine and address
    "reconciler.yaml": "deployments:\n"
    + "".join(f"  {d}:\n    models: [app.yaml]\n" for d in DEPLOYMENTS),
    "app.yaml": """\
        machines:
          m1: {deployment: {targetEnv: local}}
        packages:
          hello: {src: pkgs/hello}
        services:
          hello:
            package: hello
            type: process
            command: bin/hello
            port: auto
            healthCheck: {http: /, timeout: 10s}
        distribution:
          hello: [m1]
    """,
    "pkgs/hello/bin/hello": http_service('os.environ["RECONCILER_DEPLOYMENT"]'),
}


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    path = make_repo(tmp_path / "models", MODELS, programs=["pkgs/hello/bin/hello"])
    try:
        yield path
    finally:
        kill_instances(path)


def test_applies_of_different_deployments_run_at_once_without_colliding(repo: Path) -> None:
    done = run_parallel(*(["-d", d, "apply", "--yes"] for d in DEPLOYMENTS), cwd=repo, timeout=180)
    for d, result in zip(DEPLOYMENTS, done, strict=True):
        assert result.returncode == 0, (d, result.stderr)
        assert f"Generation 1 of {d} is active" in result.stdout
    with sqlite3.connect(repo / ".reconciler/state.db") as db:
        addresses = dict(
            db.execute("SELECT key, value FROM allocations WHERE key LIKE 'local-address/%'")
        )
        ports = dict(db.execute("SELECT deployment, port FROM instances"))
    assert len(set(addresses.values())) == len(DEPLOYMENTS), addresses
    for d in DEPLOYMENTS:
        address = addresses[f"local-address/{d}/m1"]
        with urllib.request.urlopen(f"http://{address}:{ports[d]}/", timeout=5) as answer:
            assert answer.read().decode() == d  # each answers as its own deployment


def test_an_attempt_lease_held_elsewhere_refuses_an_apply_naming_its_holder(
    repo: Path,
) -> None:
    assert run_cli("-d", "d0", "apply", "--yes", cwd=repo).returncode == 0
    with sqlite3.connect(repo / ".reconciler/state.db") as db:
        db.execute(
            "UPDATE leases SET holder = 'apply (pid 4242 on elsewhere)', "
            "expires_at = 1e12 WHERE name = 'attempt/d0'"
        )
    commit(repo, {"app.yaml": MODELS["app.yaml"].replace("10s", "9s")}, "change")
    refused = run_cli("-d", "d0", "apply", "--yes", cwd=repo)
    assert refused.returncode == 1
    assert "deployment d0 is in use by apply (pid 4242 on elsewhere)" in refused.stderr
    assert run_cli("-d", "d1", "apply", "--yes", cwd=repo).returncode == 0  # others go on
