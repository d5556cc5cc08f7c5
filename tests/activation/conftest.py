"""A temporary stateDir for the agent, with no process left behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import kill_instances


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "target"
    path.mkdir()
    yield str(path)
    # never leave a process behind, whatever the test did
    kill_instances(path, "deployments/*/instances/*/pid.json")
