"""The new keys of SPEC §9, §10 and §12 checked like every other: each mistake is one
`file:line: key: message` naming what would be right, and the valid forms load."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import InvalidModels
from reconciler.models.keys import KeyPolicy
from reconciler.models.load import LoadedDeployment, load_config, load_deployment
from reconciler.models.source import open_source
from tests.support import make_repo

MODELS = """\
machines:
  m1:
    properties: {zone: eu, rack: r1}
    capacity: {mem: 4096, slots: 4}
    deployment: {targetEnv: local}
  m2:
    properties: {zone: us, rack: r2}
    capacity: {mem: 2048}
    deployment: {targetEnv: local}
packages:
  app: {src: pkgs/app}
  db: {src: pkgs/db}
services:
  db:
    package: db
    type: sqlite-database
  app:
    package: app
    command: bin/app
    port: auto
    requires: {mem: 512}
    rollout: {maxUnavailable: 50%, minReady: 2s}
    moveState: true
distribution:
  db: [m1]
  app: {replicas: 2, select: {zone: eu}, spread: rack}
"""
CONFIG = """\
deployments:
  app:
    models: [models.yaml]
    failover: {after: 60s, stateful: latest-snapshot}
"""


def load(tmp_path: Path, models: str = MODELS, config: str = CONFIG) -> LoadedDeployment:
    files = {
        "reconciler.yaml": config,
        "models.yaml": models,
        "pkgs/app/run": "x",
        "pkgs/db/schema.sql": "",
    }
    repo = make_repo(tmp_path / "repo", files)
    source = open_source(str(repo), None, None, False, tmp_path / "cache")
    return load_deployment(source, load_config(source), "app", keys=KeyPolicy())


def problems(tmp_path: Path, models: str = MODELS, config: str = CONFIG) -> list[str]:
    with pytest.raises(InvalidModels) as e:
        load(tmp_path, models, config)
    return [str(p) for p in e.value.problems]


def test_the_valid_forms_load(tmp_path: Path) -> None:
    loaded = load(tmp_path)
    app = loaded.model.services["app"]
    assert (app.rollout.maxUnavailable, app.rollout.minReady) == ("50%", 2.0)
    assert loaded.config.failover is not None and loaded.config.failover.after == 60.0


CASES = [
    pytest.param(
        ("maxUnavailable: 50%", "maxUnavailable: 0"),
        "models.yaml:22: services.app.rollout.maxUnavailable: maxUnavailable must be a number "
        "of instances (1 or more) or a percentage from 1% to 100%; got 0",
        id="max-unavailable-zero",
    ),
    pytest.param(
        ("maxUnavailable: 50%", "maxUnavailable: 120%"),
        "got '120%'",
        id="max-unavailable-over-100",
    ),
    pytest.param(
        ("minReady: 2s", "minReady: 2"),
        "models.yaml:22: services.app.rollout.minReady: 2 is not a duration",
        id="min-ready-without-unit",
    ),
    pytest.param(
        ("requires: {mem: 512}", "requires: {mem: -1}"),
        "models.yaml:21: services.app.requires.mem: expected a number, 0 or more; got -1",
        id="negative-requires",
    ),
    pytest.param(
        ("capacity: {mem: 2048}", "capacity: {mem: -5}"),
        "models.yaml:8: machines.m2.capacity.mem: expected a number, 0 or more; got -5",
        id="negative-capacity",
    ),
    pytest.param(
        ("replicas: 2", "replicas: 0"),
        "models.yaml:26: distribution.app.replicas: expected greater than or equal to 1; got 0",
        id="no-replicas",
    ),
    pytest.param(
        ("{replicas: 2, select", "{select"),
        "models.yaml:26: distribution.app.replicas: required, but missing",
        id="replicas-missing",
    ),
    pytest.param(
        ("spread: rack}", "spread: rack, colour: red}"),
        "models.yaml:26: distribution.app.colour: unknown key 'colour'; expected one of: "
        "container, replicas, select, spread",
        id="unknown-policy-key",
    ),
    pytest.param(
        ("app: {replicas: 2, select: {zone: eu}, spread: rack}", "app: m1"),
        "models.yaml:26: distribution.app: expected a list of machines, or a policy such as "
        "{replicas: 2}; got 'm1'",
        id="neither-list-nor-policy",
    ),
    pytest.param(
        ("spread: rack}", "spread: rack, container: wrapper}"),
        "models.yaml:26: distribution.app.container: no machine that select matches (m1) "
        "offers a wrapper container for process service app",
        id="container-not-offered",
    ),
    pytest.param(
        ("spread: rack}", "spread: row}"),
        "models.yaml:26: distribution.app.spread: no machine that select matches has the "
        "property 'row' to spread over",
        id="spread-over-a-missing-property",
    ),
    pytest.param(
        ("select: {zone: eu}", "select: {zone: mars}"),
        "models.yaml:26: distribution.app.select: no machine has the properties {zone: 'mars'}",
        id="select-matches-nothing",
    ),
    pytest.param(
        ("requires: {mem: 512}", "requires: {gpu: 1}"),
        "models.yaml:21: services.app.requires.gpu: no machine has a capacity named 'gpu'",
        id="requires-without-capacity",
    ),
    pytest.param(
        ("db: [m1]", "db: [m1]\n  extra: [m1]"),
        "unknown service 'extra'",
        id="unknown-service-still-said",
    ),
    pytest.param(
        ("    type: sqlite-database\n", "    type: sqlite-database\n    moveState: true\n"),
        "services.db.moveState: moveState is for process and wrapper services; a "
        "sqlite-database moves its state anyway",
        id="move-state-on-a-database",
    ),
    pytest.param(
        ("moveState: true", "moveState: yes please"),
        "services.app.moveState: expected a valid boolean",
        id="move-state-not-a-boolean",
    ),
]


@pytest.mark.parametrize(("edit", "said"), CASES)
def test_mistakes_are_located(tmp_path: Path, edit: tuple[str, str], said: str) -> None:
    old, new = edit
    assert old in MODELS
    found = problems(tmp_path, MODELS.replace(old, new, 1))
    assert any(said in p for p in found), found


def test_explicit_instances_may_not_exceed_a_capacity(tmp_path: Path) -> None:
    models = MODELS.replace("db: [m1]", "db: [m1]\n  big: [m1]").replace(
        "services:\n",
        "services:\n  big:\n    package: db\n    requires: {mem: 5000}\n"
        "    type: sqlite-database\n",
    )
    assert problems(tmp_path, models) == [
        "models.yaml:4: machines.m1.capacity.mem: the services distributed to m1 require mem "
        "5000, more than its capacity 4096; raise it or distribute fewer there"
    ]


def test_a_database_placed_by_policy_cannot_serve_explicit_instances(tmp_path: Path) -> None:
    models = (
        MODELS.replace("db: [m1]", "db: {replicas: 1, select: {zone: eu}}")
        .replace("app: {replicas: 2, select: {zone: eu}, spread: rack}", "app: [m1]")
        .replace("    moveState: true\n", "    moveState: true\n    dependsOn: [db]\n")
    )
    assert problems(tmp_path, models) == [
        "models.yaml:24: services.app.dependsOn[0]: sqlite-database db is placed by policy, "
        "so app's machines cannot be sure to hold it; place app by policy too, or list db's "
        "machines"
    ]


@pytest.mark.parametrize(
    ("failover", "said"),
    [
        ("{after: soon}", "reconciler.yaml:4: deployments.app.failover.after: 'soon' is not"),
        ("{stateful: latest-snapshot}", "deployments.app.failover.after: required, but missing"),
        ("{after: 60s, stateful: newest}", "deployments.app.failover.stateful: expected"),
    ],
)
def test_failover_mistakes(tmp_path: Path, failover: str, said: str) -> None:
    config = CONFIG.replace("{after: 60s, stateful: latest-snapshot}", failover)
    found = problems(tmp_path, config=config)
    assert any(said in p for p in found), found
