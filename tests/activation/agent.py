"""The agent archive as shipped (`reconciler.execute.agent_client.archive`), written once per test
run; running one command with it; packages, instances and processes to test it with."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from reconciler.execute.agent_client import archive

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


IDENTITY = "a" * 64


def ok(command: str, request: Any) -> dict[str, Any]:
    code, out, stderr = run_agent(command, request)
    assert code == 0, (out, stderr)
    return out  # type: ignore[no-any-return]


def gone(pid: int) -> bool:
    """No such process, or only a zombie (the sandbox's pid 1 may not reap)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return data[data.rfind(")") + 2] in "ZX"


def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def make_package(root: Path, name: str, files: dict[str, str]) -> str:
    pkg = root / "store" / f"{'0' * 32}-{name}"
    for rel, content in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        if rel.startswith("bin/"):
            path.chmod(0o755)
    return str(pkg)


SERVER = f"""#!{sys.executable}
import http.server, json, os
print("server starting on port", os.environ["PORT"], flush=True)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/env":
            body = json.dumps({{"env": dict(os.environ), "cwd": os.getcwd()}}).encode()
        elif self.path == "/health":
            body = b"ok"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
"""

SLEEPER = '#!/bin/sh\necho "sleeper says hello pid=$$"\nexec sleep 30\n'


def process_instance(pkg: str, port: int | None, health: Any, **extra: Any) -> dict[str, Any]:
    inst = {
        "key": "web@m1",
        "service": "web",
        "type": "process",
        "package": pkg,
        "command": "bin/web",
        "user": None,
        "env": {"HOST": "127.0.0.1", "PORT": str(port), "GREETING": "hi"},
        "health": health,
        "host": "127.0.0.1",
        "port": port,
    }
    inst.update(extra)
    return inst


def status_of(state_dir: str, inst: dict[str, Any]) -> dict[str, Any]:
    fields = ("key", "service", "type", "host", "port", "health")
    item = {k: inst[k] for k in fields}
    item["identity"] = IDENTITY
    out = ok("status", {"stateDir": state_dir, "deployment": "d", "instances": [item]})
    return out["instances"][inst["key"]]  # type: ignore[no-any-return]


def sqlite_instance(pkg: str, service: str = "db") -> dict[str, Any]:
    return {
        "key": f"{service}@m1",
        "service": service,
        "type": "sqlite-database",
        "package": pkg,
        "command": None,
        "user": None,
        "env": {},
        "health": None,
        "host": "127.0.0.1",
        "port": None,
    }
