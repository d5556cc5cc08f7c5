"""`reconciler graph`: machines as clusters, instances as nodes, one edge per dependency."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import (
    free_local_addresses,
    make_repo,
    run_cli,
    run_parallel,
)

from .conftest import (
    assert_clean_failure,
    basic_files,
)

EDGE = re.compile(r'^  "([^"]+)" -> "([^"]+)" \[style=(\w+), label="(\w+)"\];$', re.M)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("graph") / "models", basic_files())


@pytest.fixture(scope="module")
def dot(repo: Path) -> str:
    done = run_cli("graph", cwd=repo)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_graph_is_a_digraph_of_the_deployment(dot: str) -> None:
    assert dot.startswith('digraph "app" {\n')
    assert dot.rstrip().endswith("}")


def test_one_cluster_per_machine_holding_its_instances(dot: str) -> None:
    clusters = re.findall(r'^  subgraph "cluster_([^"]+)" \{$', dot, re.M)
    assert clusters == ["m1", "m2"]
    body = {
        name: dot.split(f'subgraph "cluster_{name}" {{', 1)[1].split("\n  }", 1)[0]
        for name in clusters
    }
    nodes = {
        name: re.findall(r'^    "([^"]+)" \[label=', text, re.M) for name, text in body.items()
    }
    assert nodes == {"m1": ["api@m1", "db@m1", "web@m1"], "m2": ["cron@m2", "web@m2"]}
    assert f"m1 (local, {free_local_addresses(1)[0]})" in body["m1"]


def test_one_edge_per_dependency(dot: str) -> None:
    edges = {(a, b, style, kind) for a, b, style, kind in EDGE.findall(dot)}
    assert edges == {
        ("api@m1", "db@m1", "solid", "dependsOn"),
        ("web@m1", "api@m1", "solid", "dependsOn"),
        ("web@m2", "api@m1", "solid", "dependsOn"),
        # connectsTo goes to the instance on the same machine first
        ("cron@m2", "web@m2", "dashed", "connectsTo"),
    }
    assert len(EDGE.findall(dot)) == len(edges), "no duplicate edges"


def test_dot_output_is_accepted_by_graphviz(dot: str) -> None:
    exe = shutil.which("dot")
    if exe is None:
        pytest.skip("Graphviz `dot` is not installed")
    done = subprocess.run([exe, "-Tcanon"], input=dot, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_svg(repo: Path) -> None:
    if shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` is not installed")
    done = run_cli("graph", "--format", "svg", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert "<svg" in done.stdout and done.stdout.rstrip().endswith("</svg>")
    assert "web@m2" in done.stdout


def test_graph_formats(repo: Path, dot: str) -> None:
    explicit, bad = run_parallel(
        ["graph", "--format", "dot"], ["graph", "--format", "json"], cwd=repo
    )
    assert explicit.returncode == 0, explicit.stderr
    assert explicit.stdout == dot
    assert_clean_failure(bad)
    assert bad.stderr.startswith("error: --format json: this command writes ")
