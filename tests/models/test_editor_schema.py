"""`reconciler schema` (SPEC §12, issue 14): the JSON Schema editors check model files
with. Every model file of example-repo and of `reconciler init`'s scaffold passes
check-jsonschema against the printed schema; structural mistakes fail it; and whatever
validate's schema accepts, the published schema accepts too (a property test)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from reconciler.models.editor_schema import schema_for
from reconciler.models.schema import ModelDocument, RootConfig
from tests.models.documents import documents, tweaked
from tests.support import run_cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example-repo"
CHECK = shutil.which("check-jsonschema", path=str(Path(ROOT / ".venv/bin"))) or shutil.which(
    "check-jsonschema"
)
pytestmark = pytest.mark.skipif(CHECK is None, reason="check-jsonschema is a dev dependency")


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The printed schemas, as files: {"model": …, "reconciler.yaml": …}."""
    folder = tmp_path_factory.mktemp("schemas")
    out = {}
    for target, args in (("model", ()), ("reconciler.yaml", ("--for", "reconciler.yaml"))):
        done = run_cli("schema", *args, cwd=folder)
        assert done.returncode == 0, done.stderr
        json.loads(done.stdout)
        out[target] = folder / f"{target}.schema.json"
        out[target].write_text(done.stdout)
    return out


def check(schema: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    assert CHECK is not None
    return subprocess.run(
        [CHECK, "--schemafile", str(schema), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def model_files(root: Path) -> list[Path]:
    config = yaml.safe_load((root / "reconciler.yaml").read_text())
    names = {m for d in config["deployments"].values() for m in d["models"]}
    return [root / n for n in sorted(names)]


def test_every_model_file_of_example_repo_passes(schemas: dict[str, Path]) -> None:
    files = model_files(EXAMPLE)
    assert len(files) >= 7
    done = check(schemas["model"], *files)
    assert done.returncode == 0, done.stdout + done.stderr
    done = check(schemas["reconciler.yaml"], EXAMPLE / "reconciler.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_file_of_a_new_repository_passes_with_its_own_schema(tmp_path: Path) -> None:
    """`init` writes the schemas beside the models and a modeline into every file."""
    assert run_cli("init", "models", cwd=tmp_path).returncode == 0
    repo = tmp_path / "models"
    for path in [repo / "reconciler.yaml", *model_files(repo)]:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
        schema = path.parent / first.split("$schema=", 1)[1]
        done = check(schema, path)
        assert done.returncode == 0, done.stdout + done.stderr


MISTAKES = [
    pytest.param("machines:\n  m1: {colour: red}\n", "Additional properties", id="unknown-key"),
    pytest.param("machines: [m1]\n", "is not of type", id="section-a-list"),
    pytest.param(
        "machines:\n  m1:\n    deployment: {maxParallel: four}\n", "four", id="wrong-type"
    ),
    pytest.param("services:\n  Web_2: {package: web}\n", "Web_2", id="bad-name"),
    pytest.param(
        "services:\n  web: {healthCheck: {tcp: true, timeout: 10}}\n",
        "is not of type 'string'",
        id="duration-without-unit",
    ),
    pytest.param("services:\n  web: {port: automatic}\n", "automatic", id="bad-port"),
    pytest.param("distribution:\n  web: [{machine: m1}]\n", "machine", id="bad-distribution"),
    pytest.param("distribution:\n  web: {replicas: 0}\n", "web", id="no-replicas"),
    pytest.param("distribution:\n  web: {replicas: 2, zone: eu}\n", "web", id="policy-key"),
    pytest.param("distribution:\n  web: m1\n", "web", id="neither-list-nor-policy"),
    pytest.param("services:\n  web: {rollout: {maxUnavailable: 0}}\n", "maxUnavailable", id="zero"),
    pytest.param("services:\n  web: {rollout: {maxUnavailable: 101%}}\n", "101%", id="over-100"),
    pytest.param("services:\n  web: {rollout: {maxUnavailable: '3'}}\n", "'3'", id="count-as-text"),
    pytest.param("services:\n  web: {rollout: {minReady: 5}}\n", "minReady", id="no-unit"),
    pytest.param("services:\n  web: {requires: {mem: -1}}\n", "-1", id="negative-requires"),
    pytest.param("machines:\n  m1: {capacity: {mem: lots}}\n", "lots", id="capacity-not-a-number"),
    pytest.param("services:\n  web: {moveState: maybe}\n", "maybe", id="move-state"),
]


@pytest.mark.parametrize(("text", "said"), MISTAKES)
def test_structural_mistakes_fail(
    schemas: dict[str, Path], tmp_path: Path, text: str, said: str
) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    done = check(schemas["model"], path)
    assert done.returncode == 1, done.stdout
    assert said in done.stdout, done.stdout


def test_the_shorthands_validate_reads_pass(schemas: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "machines:\n  m1:\n    containers: {wrapper: null, process: {portRange: [9000, 9100]}}\n"
        "services:\n  web:\n    port: auto\n    env: {N: 3, ON: true, S: x}\n"
        "    healthCheck: {http: /health, timeout: 1.5s}\n"
        "distribution:\n  web: [m1, {target: m2, container: process}]\n"
    )
    done = check(schemas["model"], path)
    assert done.returncode == 0, done.stdout


def test_the_new_forms_pass(schemas: dict[str, Path], tmp_path: Path) -> None:
    """rollout (a count or a percentage), requires, capacity, moveState, and a policy."""
    path = tmp_path / "models.yaml"
    path.write_text(
        "machines:\n  m1: {properties: {zone: eu}, capacity: {mem: 4096, cpu: 1.5}}\n"
        "services:\n  web:\n    rollout: {maxUnavailable: 1, minReady: 5s}\n"
        "    requires: {mem: 512}\n    moveState: true\n"
        "  api: {rollout: {maxUnavailable: 100%}}\n"
        "distribution:\n  web: {replicas: 2, select: {zone: eu, ssd: true}, spread: zone}\n"
        "  api: [m1]\n  db: {replicas: 1, container: sqlite-database}\n"
    )
    done = check(schemas["model"], path)
    assert done.returncode == 0, done.stdout
    config = tmp_path / "reconciler.yaml"
    config.write_text(
        "deployments:\n  a: {models: [m.yaml], failover: {after: 60s}}\n"
        "  b: {models: [m.yaml], failover: {after: 1m, stateful: latest-snapshot}}\n"
    )
    done = check(schemas["reconciler.yaml"], config)
    assert done.returncode == 0, done.stdout


def test_a_missing_unit_or_an_unknown_key_fails_reconciler_yaml(
    schemas: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "reconciler.yaml"
    for text in (
        "deployments:\n  a: {models: [m.yaml], interval: 30}\n",
        "deployments:\n  a: {models: [m.yaml], brnch: main}\n",
        "deployments:\n  a: {interval: 30s}\n",
        "deployments:\n  a: {models: [m.yaml], failover: {after: 60}}\n",
        "deployments:\n  a: {models: [m.yaml], failover: {after: 1m, stateful: all}}\n",
    ):
        path.write_text(text)
        assert check(schemas["reconciler.yaml"], path).returncode == 1, text


def _accepted(model: type[ModelDocument] | type[RootConfig], document: Any) -> bool:
    try:
        model.model_validate(document if document is not None else {})
    except ValidationError:
        return False
    return True


MODEL_SCHEMA = jsonschema.Draft202012Validator(schema_for("model"))


@settings(max_examples=400, deadline=None)
@given(st.one_of(tweaked, documents))
def test_whatever_validate_accepts_the_schema_accepts(document: Any) -> None:
    if _accepted(ModelDocument, document):
        errors = [e.message for e in MODEL_SCHEMA.iter_errors(document)]
        assert not errors, errors
