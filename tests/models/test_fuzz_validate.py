"""For any YAML document shape, `validate` exits 0 or 1, and every problem it reports is a
`file:line: …` line: never a traceback (issue 13).

The documents (tests/models/documents.py) are written to a real repository and checked by
the real command line, in this process.
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

from reconciler.cli import main
from tests.models.documents import RECONCILER_YAML, VALID, documents
from tests.support import make_repo

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
