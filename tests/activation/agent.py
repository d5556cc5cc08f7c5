"""The agent archive as shipped (`reconciler.execute.agent.archive`), written once per test
run, and a way to run one command with it."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from reconciler.execute.agent import archive

# RECONCILER_AGENT_PYTHON=python3.9 runs the agent with the oldest python a target may have
PYTHON = os.environ.get("RECONCILER_AGENT_PYTHON", sys.executable)


def _write_archive() -> str:
    folder = tempfile.mkdtemp(prefix="agent-archive-")
    atexit.register(shutil.rmtree, folder, True)
    path = os.path.join(folder, "agent.pyz")
    with open(path, "wb") as f:
        f.write(archive())
    return path


AGENT = _write_archive()


def run_agent(command: str, request: Any = None, raw: bytes | None = None) -> tuple[int, Any, str]:
    """(exit status, the one JSON answer, stderr); never a traceback."""
    data = raw if raw is not None else json.dumps(request).encode()
    proc = subprocess.run(
        [PYTHON, AGENT, command], input=data, capture_output=True, timeout=60, check=False
    )
    stdout = proc.stdout.decode()
    stderr = proc.stderr.decode()
    assert "Traceback" not in stdout + stderr, stdout + stderr
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout  # exactly one JSON object
    out = json.loads(lines[0])
    assert isinstance(out, dict)
    return proc.returncode, out, stderr
