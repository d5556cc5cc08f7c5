"""A temporary stateDir for the agent, with no process left behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "target"
    path.mkdir()
    yield str(path)
    # never leave a process behind, whatever the test did
    for pid_file in path.glob("deployments/*/instances/*/pid.json"):
        with contextlib.suppress(Exception):
            os.killpg(json.loads(pid_file.read_text())["pid"], signal.SIGKILL)
