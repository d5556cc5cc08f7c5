"""For any YAML document shape, `validate` exits 0 or 1, and every problem it reports is a
`file:line: …` line: never a traceback (issue 13).

Documents are either random shapes over the model's own key vocabulary, or a valid model
with one value anywhere replaced by a random one (the shape of most real mistakes). Each
is written to a real repository and checked by the real command line, in this process.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from reconciler.cli import main
from reconciler.models import schema
from tests.support import make_repo

RECONCILER_YAML = "deployments:\n  app:\n    models: [models.yaml]\n"
VALID: dict[str, Any] = {
    "machines": {
        "m1": {"deployment": {"targetEnv": "local"}, "containers": {"process": {}}},
        "m2": {"deployment": {"targetEnv": "ssh", "ssh": {"host": "h"}}},
    },
    "packages": {"app": {"src": "pkgs/app", "deps": ["db"]}, "db": {"src": "pkgs/db"}},
    "services": {
        "db": {"package": "db", "type": "sqlite-database"},
        "app": {
            "package": "app",
            "command": "bin/app",
            "port": "auto",
            "dependsOn": ["db"],
            "env": {"LOG": "info"},
            "healthCheck": {"tcp": True, "timeout": "5s"},
        },
    },
    "distribution": {"db": ["m1"], "app": [{"target": "m1", "container": "process"}]},
}


def _field_names() -> list[str]:
    models = [v for v in vars(schema).values() if isinstance(v, type) and issubclass(v, BaseModel)]
    return sorted({name for m in models for name in m.model_fields})


KEYS = [*_field_names(), "m1", "m2", "app", "db", "ghost", "process", "Bad Name", "1"]
WORDS = ["auto", "30s", "local", "ssh", "process", "sqlite-database", "m1", "app", "db"]
WORDS += ["bin/app", "pkgs/app", "/etc", "..", "", "0400", "[8000, 8999]", "~"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 70_000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(WORDS),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=6),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=12,
)
TOP = ["description", "machines", "packages", "services", "distribution", "colour"]


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _paths(v, (*prefix, i))


def _replace(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[path[0]] = _replace(data[path[0]], path[1:], value)
    return copy


mutated = st.builds(_replace, st.just(VALID), st.sampled_from(list(_paths(VALID))), values)
shapes = st.dictionaries(st.sampled_from(TOP), values, max_size=5)
documents = st.one_of(mutated, shapes, values)

PROBLEM = re.compile(r"(models|reconciler)\.yaml:[1-9][0-9]*: \S.*")
SUMMARY = re.compile(r"[0-9]+ problems?( in app)?; nothing was changed\.")


@pytest.fixture(scope="module")
def repo() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield make_repo(
            Path(tmp) / "models",
            {
                "reconciler.yaml": RECONCILER_YAML,
                "models.yaml": yaml.safe_dump(VALID),
                "pkgs/app/bin/app": "#!/bin/sh\n",
                "pkgs/db/schema.sql": "CREATE TABLE t (x INTEGER);\n",
            },
        )


def validate(repo: Path, text: str) -> tuple[int, list[str]]:
    (repo / "models.yaml").write_text(text)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["--repo", str(repo), "--state", str(repo / "state.db"), "validate", "--worktree"])
        except SystemExit as e:
            return int(e.code or 0), err.getvalue().splitlines()
    raise AssertionError("the command line always exits")


def test_the_valid_model_validates(repo: Path) -> None:
    assert validate(repo, yaml.safe_dump(VALID)) == (0, [])


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(documents)
def test_any_document_shape_is_valid_or_located_problems(repo: Path, document: Any) -> None:
    code, lines = validate(repo, yaml.safe_dump(document, allow_unicode=True))
    assert code in (0, 1), lines
    if code == 1:
        assert lines and SUMMARY.fullmatch(lines[-1]), lines
        for line in lines[:-1]:
            assert PROBLEM.fullmatch(line), line
    assert not (repo / "state.db").exists()
