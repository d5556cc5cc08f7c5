"""A process service's state folder is never dropped silently when it moves (SPEC §12):
without `moveState` the plan warns; with `moveState: true` the folder moves with it,
before the service starts on its new machine."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import commit, kill_instances, make_repo, run_cli

pytestmark = pytest.mark.slow

COUNTER = """\
#!/usr/bin/env python3
import http.server, os, socketserver

path = os.path.join(os.environ["RECONCILER_STATE"], "visits")

class Counter(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        count = int(open(path).read()) + 1 if os.path.exists(path) else 1
        with open(path, "w") as f:
            f.write(str(count))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(str(count).encode())

    def log_message(self, *args):
        pass

class Server(http.server.HTTPServer):
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)

Server((os.environ["HOST"], int(os.environ["PORT"])), Counter).serve_forever()
"""


def models(where: str, move_state: bool) -> str:
    flag = "    moveState: true\n" if move_state else ""
    return (
        "machines:\n  m1: {deployment: {targetEnv: local}}\n"
        "  m2: {deployment: {targetEnv: local}}\n"
        "packages:\n  counter: {src: pkgs/counter}\n"
        "services:\n  counter:\n    package: counter\n    type: process\n"
        "    command: bin/counter\n    port: auto\n    healthCheck: {tcp: true, timeout: 10s}\n"
        f"{flag}"
        f"distribution:\n  counter: [{where}]\n"
    )


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    path = make_repo(
        tmp_path / "models",
        {
            "reconciler.yaml": "deployments:\n  d:\n    models: [app.yaml]\n",
            "app.yaml": models("m1", move_state=True),
            "pkgs/counter/bin/counter": COUNTER,
        },
        programs=["pkgs/counter/bin/counter"],
    )
    try:
        yield path
    finally:
        kill_instances(path)


def visit(repo: Path) -> int:
    done = run_cli("-d", "d", "status", "--format", "json", cwd=repo)
    status = json.loads(done.stdout)
    [inst] = status["instances"]
    address = {m["name"]: m["address"] for m in status["machines"]}[inst["machine"]]
    with urllib.request.urlopen(f"http://{address}:{inst['port']}/", timeout=5) as answer:
        return int(answer.read())


def test_move_state_carries_the_state_folder_along(repo: Path) -> None:
    assert run_cli("-d", "d", "apply", "--yes", cwd=repo).returncode == 0
    assert [visit(repo) for _ in range(3)] == [1, 2, 3]

    commit(repo, {"app.yaml": models("m2", move_state=True)}, "move it")
    moved = run_cli("-d", "d", "apply", "--yes", cwd=repo)
    assert moved.returncode == 0, moved.stderr
    assert visit(repo) == 4  # it counts on where it left off, on m2
    assert (repo / ".reconciler/machines/m2/deployments/d/state/counter/visits").exists()


def test_without_move_state_the_plan_warns(repo: Path) -> None:
    commit(repo, {"app.yaml": models("m1", move_state=False)}, "no moveState")
    assert run_cli("-d", "d", "apply", "--yes", cwd=repo).returncode == 0
    commit(repo, {"app.yaml": models("m2", move_state=False)}, "move it")
    plan = run_cli("-d", "d", "plan", cwd=repo)
    assert "its state folder (RECONCILER_STATE) on m1 is not moved" in plan.stdout + plan.stderr
