"""Support for end-to-end tests: real Git repositories with a fixed author, committer and
date (the user's git configuration switched off), the installed console script, and a
tiny HTTP service for models to run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_NEXT_TO_PYTHON = Path(sys.executable).with_name("reconciler")
RECONCILER = str(_NEXT_TO_PYTHON) if _NEXT_TO_PYTHON.exists() else "reconciler"

_REGISTRY = tempfile.mkdtemp(prefix="reconciler-test-registry-")

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.test",
    "GIT_AUTHOR_DATE": "2024-01-02T03:04:05+00:00",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.test",
    "GIT_COMMITTER_DATE": "2024-01-02T03:04:05+00:00",
}


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for git and the CLI: no user/system git config, no colours, no
    inherited RECONCILER_STATE."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "RECONCILER_"))}
    # the test's own host registry (tests/conftest.py), else this run's: tests never see
    # (nor leave) claims in the host's real one
    env["RECONCILER_HOST_REGISTRY"] = os.environ.get("RECONCILER_HOST_REGISTRY") or _REGISTRY
    env.update(GIT_IDENTITY)
    env.update(
        {
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }
    )
    env.update(extra)
    return env


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, env=clean_env(), capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def write_files(root: Path, files: Mapping[str, str | None]) -> None:
    """Write {relpath: text} under root; a value of None deletes the file."""
    for rel, text in files.items():
        path = root / rel
        if text is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def commit(repo: Path, files: Mapping[str, str | None], message: str = "change") -> str:
    """Write files into repo, commit everything, return the new commit's SHA."""
    write_files(repo, files)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def make_repo(
    path: Path, files: Mapping[str, str | None], branch: str = "main", programs: Sequence[str] = ()
) -> Path:
    """A new Git repository at path holding files in one commit on `branch`; `programs`
    (paths in it) made executable in a second commit, when it names any."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", branch)
    commit(path, files, "initial models")
    if programs:
        for program in programs:
            (path / program).chmod(0o755)
        commit(path, {}, "executable")
    return path


def run_cli(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the installed `reconciler` console script."""
    return subprocess.run(
        [RECONCILER, *args],
        cwd=cwd,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_parallel(
    *commands: list[str], cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 60
) -> list[subprocess.CompletedProcess[str]]:
    """Run several independent CLI calls at once (each costs ~0.3 s of start-up)."""
    procs = [
        (
            args,
            subprocess.Popen(
                [RECONCILER, *args],
                cwd=cwd,
                env=clean_env(**(env or {})),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for args in commands
    ]
    results = []
    for args, proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess([RECONCILER, *args], proc.returncode, out, err))
    return results


def run_json(*args: str, cwd: Path, **kw: Any) -> Any:
    done = run_cli(*args, "--format", "json", cwd=cwd, **kw)
    assert done.returncode in (0, 2), done.stderr
    return json.loads(done.stdout)


def free_local_addresses(count: int) -> list[str]:
    """The loopback addresses a new state hands out first (SPEC §2.3, §12): from
    127.0.0.10 up, skipping what a process on this host listens on."""
    import ipaddress

    from reconciler.desired.host_addresses import listening_on_loopback

    taken = listening_on_loopback()
    out: list[str] = []
    candidate = ipaddress.IPv4Address("127.0.0.10")
    while len(out) < count:
        if str(candidate) not in taken:
            out.append(str(candidate))
        candidate += 1
    return out


def free_port() -> int:
    """A loopback port nothing listens on now (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kill_instances(
    root: Path, pid_files: str = ".reconciler/machines/*/deployments/*/instances/*/pid.json"
) -> None:
    """Kill the process group of every instance the agent recorded below `root` (by
    default a models repository applied with its default state): whatever a test did, it
    leaves no process behind."""
    for pid_file in root.glob(pid_files):
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.killpg(json.loads(pid_file.read_text())["pid"], signal.SIGKILL)


def http_service(answer: str, start_delay: str = "0") -> str:
    """The program of a `process` service: after `start_delay` seconds it answers every
    GET on $HOST:$PORT with 200 and `answer`. Both are Python expressions run in it: a
    literal (repr("v1")), or what the environment says (os.environ["RECONCILER_MACHINE"])."""
    return f"""#!/usr/bin/env python3
import http.server, os, socketserver, time
time.sleep({start_delay})  # a slow start, when the test wants one
ANSWER = ({answer}).encode()

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(ANSWER)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):  # without HTTPServer's reverse DNS lookup: no DNS in a namespace
        socketserver.TCPServer.server_bind(self)

Server((os.environ["HOST"], int(os.environ["PORT"])), Hello).serve_forever()
"""
