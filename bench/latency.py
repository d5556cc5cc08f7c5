#!/usr/bin/env python3
"""Benchmark commit-to-active latency of `reconciler run` (issue 5), and the cost of a
poll that finds nothing new.

A tiny deployment — one `process` service ("hello", an HTTP server answering its
version string) on one `local` machine — is run by a controller, and new versions are
committed while the bench polls the service every 20 ms for the new body. Latency runs
from the moment the commit exists (`git commit` returned, for a local repository) or is
pushed (`git push` returned, for a remote) to the first answer with the new body.
Triggers:

- **watch**: `reconciler --repo <work tree> --state S run --listen 127.0.99.1:0`, with
  `interval: 5m` in reconciler.yaml: only the watchdog on the repository's refs can
  explain a fast deploy. The commit is made in that work tree.
- **webhook**: a bare repository served by `git daemon` (127.0.99.1), the controller
  with `--webhook-secret-file`, `interval: 5m`. Push, then at once POST a GitHub-style
  push event (`X-GitHub-Event: push`, `X-Hub-Signature-256: sha256=<HMAC>`, the
  repository's URL as `repository.clone_url`) to `/hooks/git` of the controller.
- **polling**: the same kind of remote, `interval: 2s` (`--poll-interval`), no webhook.
  A random pause before each push spreads the commits over the poll cycle.
- **commit during an apply** (watch and webhook, once each unless --no-busy): a
  second commit made while the apply of the first is running (its `reconciler apply`
  child process exists); latency of the second commit. A webhook is sent for it too.

For each deployed commit the controller's stderr line `web: <sha> applied in X s` gives
the pass's own time (ls-remote, load, validate, plan and the apply child); the moment
the bench read that line, less X, is when the pass began: *trigger delay* = that moment
minus the commit. The state DB's attempt gives when the apply child started its attempt.

**No-op poll**: `DeploymentLoop.reconcile()` (reconciler/controller/loop.py) called in
this process, against the webhook scenario's git daemon remote and the watch scenario's
local work tree, after the controller is stopped: one call handles the head (load, plan:
nothing to do), then --noop-calls timed calls find the branch where it was. Checked: no
fetch — a `git` wrapper first on PATH logs every git command the calls start, and the
mirror's FETCH_HEAD and refs keep their mtimes. For comparison: `git ls-remote` alone,
and the whole pass the controller runs each interval (`Controller.one_pass`: reconcile,
observe the machine, self-heal check, store the conditions).

The bench commits only once the controller is idle (its API shows the last pass's
document). A version that does not answer within --timeout (30 s) is counted *lost*
(it would have waited for the next poll) and empty commits bring it, to go on measuring.
For the watch, the bench also records which watchdog events the controller's filter lets
through for one `git commit` and one `git ls-remote` (a fresh repository, same filter).

Everything started here (controllers, git daemon, services) is stopped and each
deployment destroyed (`reconciler --state S -d web destroy --yes`), even on failure.
Services listen on 127.0.99.11-13; the controllers and git daemon on 127.0.99.1.

With --write-results the report replaces the `## latency` section of bench/RESULTS.md.
Run `python3 bench/latency.py -h` for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import math
import os
import platform
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import snapshot  # noqa: E402  (beside this script)
from results import write_section  # noqa: E402  (beside this script)

OUT_DIR = BENCH_DIR / "out"
SNAPSHOT_DIR = OUT_DIR / "latency-snapshot"
RESULTS_FILE = BENCH_DIR / "RESULTS.md"
SECTION = "## latency"
DEPLOYMENT = "web"
HOST = "127.0.99.1"  # git daemon and the controllers' HTTP
SERVICE_ADDRESS = {"watch": "127.0.99.11", "webhook": "127.0.99.12", "polling": "127.0.99.13"}
LONG_INTERVAL = "5m"
POLL_EVERY = 0.02  # how often the bench asks the service for its body
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GOAL_LATENCY = 2.0  # s, watch and webhook (issue 5)
GOAL_NOOP = 0.100  # s per deployment, a poll with nothing new, no fetch
# Default polling of the peers the issue names (what a commit waits before it is seen).
PEERS = (
    ("Argo CD", 180.0, "polls every 3 min by default (`timeout.reconciliation`)"),
    ("Flux", 60.0, "GitRepository `interval: 1m` as `flux bootstrap` writes it"),
    ("comin", 60.0, "polls every 60 s by default"),
)

HELLO = """#!/usr/bin/env python3
import http.server, os
MESSAGE = "{message}"
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(MESSAGE.encode())
    def log_message(self, *args):
        pass
http.server.HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Hello).serve_forever()
"""

# No proxy for loopback, whatever the environment says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- the reconciler under test -------------------------------------------------------------


def take_snapshot(ref: str | None) -> str:
    """reconciler/ as it is now (or at commit `ref`) for the controllers, their apply
    children and the in-process no-op measurement; returns what was measured."""
    return snapshot.take_snapshot(SNAPSHOT_DIR, ref)


def reconciler_cmd() -> list[str]:
    """The console script beside this interpreter (not a pyenv shim), else `-m reconciler`."""
    script = Path(sys.executable).parent / "reconciler"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "reconciler"]


def child_env(keep_path: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "RECONCILER_"))}
    if env.pop("PYTHONDONTWRITEBYTECODE", None):
        env.setdefault("PYTHONPYCACHEPREFIX", str(OUT_DIR / "pycache"))
    env["PYTHONPATH"] = os.pathsep.join([str(SNAPSHOT_DIR), *filter(None, [env.get("PYTHONPATH")])])
    if not keep_path:
        env["PATH"] = STANDARD_PATH
    env.update(
        GIT_AUTHOR_NAME="bench",
        GIT_AUTHOR_EMAIL="bench@example.test",
        GIT_COMMITTER_NAME="bench",
        GIT_COMMITTER_EMAIL="bench@example.test",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        NO_COLOR="1",
    )
    return env


# --- repositories --------------------------------------------------------------------------


def git(repo: Path, *args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {repo}: {done.stderr.strip()}")
    return done.stdout.strip()


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def write_models(work: Path, interval: str, address: str, port: int) -> None:
    (work / "reconciler.yaml").write_text(
        "deployments:\n"
        f"  {DEPLOYMENT}:\n"
        "    models: [models.yaml]\n"
        "    branch: main\n"
        f"    interval: {interval}\n"
        "    selfHeal: true\n"
    )
    (work / "models.yaml").write_text(
        "description: bench/latency.py\n"
        f"machines:\n  m1: {{deployment: {{targetEnv: local, address: {address}}}}}\n"
        "packages:\n  hello: {src: hello}\n"
        "services:\n  hello:\n    package: hello\n    type: process\n"
        f"    command: bin/hello\n    port: {port}\n"
        "    healthCheck: {http: /, timeout: 20s}\n"
        "distribution:\n  hello: [m1]\n"
    )


def write_version(work: Path, n: int) -> None:
    program = work / "hello" / "bin" / "hello"
    program.parent.mkdir(parents=True, exist_ok=True)
    program.write_text(HELLO.format(message=f"v{n}"))
    program.chmod(0o755)


def body_of(n: int) -> str:
    return f"v{n}"


# --- the controller ------------------------------------------------------------------------


_APPLIED = re.compile(rf"{DEPLOYMENT}: ([0-9a-f]{{12}}) (\w+) in ([0-9.]+) s")


class Controller:
    """`reconciler run` with its stderr read line by line, each line with the time it was
    read (and copied to a log file)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.log = log
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=log.parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.log.open("w") as out:
            for line in self.proc.stderr:
                now = time.time()
                out.write(line)
                out.flush()
                with self.cond:
                    self.lines.append((now, line.rstrip("\n")))
                    self.cond.notify_all()

    def wait_line(
        self, match: Callable[[str], Any], after: float = 0.0, timeout: float = 60
    ) -> tuple[float, Any]:
        """The first line read after `after` for which `match` is truthy: (when, match)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, line in self.lines:
                    if at >= after and (got := match(line)):
                        return at, got
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    why = "exited" if self.proc.poll() is not None else "timed out"
                    raise RuntimeError(f"controller {why} waiting for a line:\n{self.tail()}")
                self.cond.wait(min(left, 0.5))

    def applied(
        self, shas: Sequence[str], after: float, timeout: float = 60
    ) -> tuple[str, float, float]:
        """The first line `web: <sha> applied in X s` for one of `shas` read after `after`:
        which sha, when it was read, and X."""

        def match(line: str) -> tuple[str, float] | None:
            m = _APPLIED.search(line)
            found = next((s for s in shas if m and s.startswith(m.group(1))), None)
            if m and found:
                if m.group(2) != "applied":
                    raise RuntimeError(f"{found[:12]}: {line}")
                return found, float(m.group(3))
            return None

        at, (sha, seconds) = self.wait_line(match, after, timeout)
        return sha, at, seconds

    def tail(self, n: int = 30) -> str:
        return "\n".join(line for _, line in self.lines[-n:])

    def stop(self) -> int | None:
        """SIGTERM (it settles what is in flight), SIGKILL after 60 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=5)
        return self.proc.returncode

    def apply_child(self) -> bool:
        """Whether a `reconciler … apply` child of the controller runs now."""
        me = str(self.proc.pid)
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{name}/stat").read_text()
                parent = stat.rsplit(")", 1)[1].split()[1]
                if parent == me and b"\0apply\0" in Path(f"/proc/{name}/cmdline").read_bytes():
                    return True
        return False


def answer(url: str) -> str | None:
    try:
        with _OPENER.open(url, timeout=1) as r:
            return str(r.read().decode(errors="replace"))
    except (OSError, urllib.error.URLError, ValueError):
        return None


def wait_answer(url: str, body: str, timeout: float) -> float | None:
    """Ask `url` every POLL_EVERY s; the time the body was first `body`, None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answer(url) == body:
            return time.time()
        time.sleep(POLL_EVERY)
    return None


def wait_idle(sc: Scenario, sha: str, timeout: float = 120) -> float:
    got = try_idle(sc, sha, timeout)
    if got is None:
        raise RuntimeError(f"{sc.kind}: the controller never showed {sha[:12]} as its head")
    return got


def try_idle(sc: Scenario, sha: str, timeout: float) -> float | None:
    """When the controller's API first shows the pass that handled `sha` ended: the view's
    document is stored at the end of a pass (after observing the machine), and the loop
    waits for its next trigger right after. A poke that comes before is dropped when the
    pass ends (see the report), so the bench commits only after this."""
    url = f"{sc.listen}api/deployments/{DEPLOYMENT}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
            with _OPENER.open(url, timeout=2) as r:
                doc = json.loads(r.read())
            if (doc.get("controller") or {}).get("head") == sha:
                return time.time()
        time.sleep(POLL_EVERY)
    return None


@dataclass(frozen=True)
class PassMetrics:
    """From the controller's /metrics: passes that did something (idle ones are not
    counted), their total seconds (full precision), when a generation was last applied."""

    count: float
    total: float
    applied_at: float


def pass_metrics(sc: Scenario) -> PassMetrics:
    with _OPENER.open(f"{sc.listen}metrics", timeout=5) as r:
        text = r.read().decode()
    label = f'{{deployment="{DEPLOYMENT}"}}'

    def value(name: str) -> float:
        m = re.search(rf"^{name}{re.escape(label)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    return PassMetrics(
        value("reconciler_reconcile_duration_seconds_count"),
        value("reconciler_reconcile_duration_seconds_sum"),
        value("reconciler_last_applied_timestamp_seconds"),
    )


def post_push_event(listen: str, secret: str, clone_url: str) -> tuple[int, float]:
    """A GitHub push event to /hooks/git: (HTTP status, seconds the request took)."""
    body = json.dumps({"ref": "refs/heads/main", "repository": {"clone_url": clone_url}}).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"{listen}hooks/git",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-Hub-Signature-256": signature,
        },
    )
    t0 = time.perf_counter()
    try:
        with _OPENER.open(request, timeout=10) as r:
            status, reply = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, reply = e.code, e.read()
    took = time.perf_counter() - t0
    if status != 202 or json.loads(reply).get("poked") != 1:
        raise RuntimeError(f"webhook: HTTP {status} {reply!r}")
    return status, took


def attempt_times(state: Path, sha: str) -> tuple[float, float] | None:
    """started_at, finished_at of the attempt that applied `sha`."""
    with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=10)) as db:
        row = db.execute(
            "SELECT started_at, finished_at FROM attempts WHERE deployment = ? AND commit_sha = ? "
            "ORDER BY started_at DESC LIMIT 1",
            [DEPLOYMENT, sha],
        ).fetchone()
    if not row or not row[1]:
        return None
    return stamp(row[0]), stamp(row[1])


def stamp(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- one trigger -----------------------------------------------------------------------------


@dataclass
class Sample:
    n: int  # version
    latency: float  # commit (or push) → new body answered
    pass_seconds: float  # the controller's "applied in X s"
    trigger: float  # commit → pass began (log line read − X)
    attempt_start: float | None  # commit → the apply child's attempt started
    tail: float  # new body answered → the pass ended
    precise: bool  # pass figures from /metrics (else the log line, 0.1 s resolution)
    webhook_s: float | None = None  # the POST's round trip
    busy: bool = False  # committed while the previous commit's apply ran
    lost: bool = False  # not answered within the timeout; a new trigger was needed
    sha: str = ""  # the commit deployed (an empty "nudge" commit's when lost)
    settle: float = 0.0  # the log line read → the API shows the pass ended (observe)


@dataclass
class Scenario:
    kind: str  # watch | webhook | polling
    interval: str
    timeout: float  # s to wait for a new version before calling it lost
    repo: str = ""  # --repo: the work tree or the git daemon URL
    work: Path = Path()
    state: Path = Path()
    endpoint: str = ""
    listen: str = ""
    first_deploy: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    busy: Sample | None = None
    noop: Noop | None = None
    stop_code: int | None = None
    stop_seconds: float = 0.0  # SIGTERM → exit, the controller idle
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the start and end

    @property
    def remote(self) -> bool:
        return self.kind != "watch"


class Bench:
    def __init__(self, args: argparse.Namespace, base: Path, log: Callable[[str], None]):
        self.args = args
        self.base = base
        self.log = log
        self.env = child_env(args.keep_path)
        self.secret = secrets.token_hex(16)
        self.secret_file = base / "webhook-secret"
        self.secret_file.write_text(self.secret + "\n")
        self.served = base / "served"
        self.served.mkdir()
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_port = 0

    # git daemon: one for the remote scenarios, every bare repository under served/
    def start_daemon(self) -> None:
        self.daemon_port = free_port(HOST)
        self.daemon = subprocess.Popen(
            [
                "git",
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--enable=receive-pack",
                f"--listen={HOST}",
                f"--port={self.daemon_port}",
                f"--base-path={self.served}",
                str(self.served),
            ],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex((HOST, self.daemon_port)) == 0:
                    return
            if time.monotonic() > deadline or self.daemon.poll() is not None:
                raise RuntimeError("git daemon did not start")
            time.sleep(0.05)

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()

    def prepare(self, sc: Scenario) -> None:
        root = self.base / sc.kind
        sc.work = root / "work"
        sc.state = root / "controller" / "state.db"
        sc.state.parent.mkdir(parents=True)
        address = SERVICE_ADDRESS[sc.kind]
        port = free_port(address)
        sc.endpoint = f"http://{address}:{port}/"
        sc.work.mkdir(parents=True)
        git(sc.work, "init", "-q", "-b", "main", env=self.env)
        write_models(sc.work, sc.interval, address, port)
        write_version(sc.work, 1)
        git(sc.work, "add", "-A", env=self.env)
        git(sc.work, "commit", "-q", "-m", "hello v1", env=self.env)
        if sc.remote:
            bare = self.served / f"{sc.kind}.git"
            git(self.served, "init", "-q", "--bare", "-b", "main", str(bare), env=self.env)
            sc.repo = f"git://{HOST}:{self.daemon_port}/{sc.kind}.git"
            git(sc.work, "remote", "add", "origin", sc.repo, env=self.env)
            git(sc.work, "push", "-q", "origin", "main", env=self.env)
        else:
            sc.repo = str(sc.work)

    def commit(self, sc: Scenario, n: int | None) -> float:
        """Version n (None: an empty commit) committed, and pushed for a remote; when that
        returned. Nothing else touches the repository until the new version answers: with
        the watch, even a read (`git rev-parse`) of the refs wakes the controller."""
        if n is None:
            git(sc.work, "commit", "-q", "--allow-empty", "-m", "nudge", env=self.env)
        else:
            write_version(sc.work, n)
            git(sc.work, "commit", "-q", "-am", f"hello v{n}", env=self.env)
        if sc.remote:
            git(sc.work, "push", "-q", "origin", "main", env=self.env)
        return time.time()

    def head(self, sc: Scenario) -> str:
        return git(sc.work, "rev-parse", "HEAD", env=self.env)

    def settle(self, sc: Scenario, c: Controller) -> None:
        """Until the controller has handled the work tree's head and is idle."""
        for _ in range(3):
            if try_idle(sc, self.head(sc), 15) is not None:
                return
            self.commit(sc, None)
            self.trigger(sc)
        raise RuntimeError(f"{sc.kind}: the controller does not follow the head:\n{c.tail()}")

    def nudge(self, sc: Scenario, c: Controller, body: str, tries: int = 3) -> list[str]:
        """Empty commits (and webhooks) until the service answers `body`; their shas."""
        shas = []
        for _ in range(tries):
            self.commit(sc, None)
            self.trigger(sc)
            if wait_answer(sc.endpoint, body, 20) is not None:
                return [*shas, self.head(sc)]
            shas.append(self.head(sc))
        raise RuntimeError(f"{sc.kind}: {body} never answered:\n{c.tail()}")

    def trigger(self, sc: Scenario) -> float | None:
        if sc.kind != "webhook":
            return None
        return post_push_event(sc.listen, self.secret, sc.repo)[1]

    def start_controller(self, sc: Scenario) -> Controller:
        cmd = [*reconciler_cmd(), "--repo", sc.repo, "--state", str(sc.state), "run"]
        cmd += ["--listen", f"{HOST}:0"]
        if sc.kind == "webhook":
            cmd += ["--webhook-secret-file", str(self.secret_file)]
        c = Controller(cmd, self.env, sc.state.parent.parent / "controller.log")
        _, m = c.wait_line(lambda line: re.search(r"listening on (http://\S+/)", line), 0, 60)
        sc.listen = m.group(1)
        return c

    def busy_probe(self, sc: Scenario, c: Controller, n: int) -> Sample:
        """Version n-1 committed, then version n as soon as n-1's apply child runs; the
        latency of version n. When n-1 itself starts no apply within 10 s (lost), it is
        brought by empty commits and the probe starts again with the next versions."""
        for _ in range(3):
            self.commit(sc, n - 1)
            self.trigger(sc)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if c.apply_child():
                    return self.measure(sc, c, n, busy=True)
                time.sleep(0.005)
            self.log(f"{sc.kind}: no apply for v{n - 1} within 10 s; empty commits, again")
            t = time.time()
            shas = [self.head(sc), *self.nudge(sc, c, body_of(n - 1))]
            c.applied(shas, t - 60)
            self.settle(sc, c)
            time.sleep(0.5)
            n += 2
        raise RuntimeError(f"{sc.kind}: no apply started for the busy probe:\n{c.tail()}")

    def measure(self, sc: Scenario, c: Controller, n: int, busy: bool = False) -> Sample:
        """Commit version n, trigger, wait for it to answer (`busy`: the caller made sure an
        apply runs). A version not answering within the timeout is lost: empty commits
        then bring it (to go on measuring)."""
        before = pass_metrics(sc)
        t0 = self.commit(sc, n)
        hook = self.trigger(sc)
        timeout = self.args.timeout
        if sc.kind == "polling":
            timeout = max(timeout, 3 * interval_s(sc))
        t1 = wait_answer(sc.endpoint, body_of(n), timeout)
        candidates = [self.head(sc)]
        lost = t1 is None
        if lost:
            self.log(f"{sc.kind}: v{n} not answered within {timeout:.0f} s; empty commits")
            candidates += self.nudge(sc, c, body_of(n))
            t1 = time.time()
        sha, at, seconds = c.applied(candidates, t0 - 1)
        attempt = attempt_times(sc.state, sha)
        idle = wait_idle(sc, sha)
        if lost:  # the last empty commit deployed too, the controller idle again
            self.settle(sc, c)
        after = pass_metrics(sc)
        precise = after.count - before.count == 1 and after.applied_at > t0
        if precise:  # one pass did something: its exact duration and end
            seconds = after.total - before.total
            at = after.applied_at
        return Sample(
            n=n,
            latency=t1 - t0,
            pass_seconds=seconds,
            trigger=at - seconds - t0,
            precise=precise,
            attempt_start=attempt[0] - t0 if attempt else None,
            tail=at - t1,
            webhook_s=hook,
            busy=busy,
            lost=lost,
            sha=sha,
            settle=idle - at,
        )

    def run(self, sc: Scenario) -> None:
        load0 = os.getloadavg()[0]
        self.prepare(sc)
        c: Controller | None = None
        try:
            t_start = time.time()
            c = self.start_controller(sc)
            self.log(f"{sc.kind}: controller on {sc.listen}, repo {sc.repo}")
            if wait_answer(sc.endpoint, body_of(1), 180) is None:
                raise RuntimeError(f"{sc.kind}: v1 never answered:\n{c.tail()}")
            sc.first_deploy = time.time() - t_start
            head = self.head(sc)
            c.applied([head], 0)
            wait_idle(sc, head)
            n = 1
            for _ in range(self.args.repeat):
                # The last pass has ended (wait_idle); then a pause: anywhere in the poll
                # cycle for polling, a short one otherwise.
                if sc.kind == "polling":
                    time.sleep(random.uniform(0.0, 1.1 * interval_s(sc)))
                else:
                    time.sleep(random.uniform(0.2, 0.7))
                n += 1
                s = self.measure(sc, c, n)
                sc.samples.append(s)
                self.log(
                    f"{sc.kind} v{n}: {s.latency:.3f} s (trigger {s.trigger:.2f} s, pass "
                    f"{s.pass_seconds:.1f} s, log {s.tail:.2f} s after, pass ended "
                    f"{s.settle:.2f} s after that)" + (" LOST" if s.lost else "")
                )
            if sc.kind != "polling" and not self.args.no_busy:
                time.sleep(0.5)
                n += 2
                sc.busy = self.busy_probe(sc, c, n)
                n = sc.busy.n
                self.log(
                    f"{sc.kind} v{n} committed during v{n - 1}'s apply: "
                    f"{sc.busy.latency:.3f} s" + (" LOST" if sc.busy.lost else "")
                )
            sc.load = (load0, os.getloadavg()[0])
            # A read of the watched refs (the bench's own `git rev-parse`) wakes the
            # controller too; let such a pass end: a SIGTERM during a pass is not acted on
            # before the next poll (the wake-up event the pass ends by clearing).
            time.sleep(1.0)
            t = time.perf_counter()
            sc.stop_code = c.stop()
            sc.stop_seconds = time.perf_counter() - t
            if sc.stop_code != 0:
                self.log(f"{sc.kind}: the controller exited {sc.stop_code} on SIGTERM")
            if sc.kind in ("watch", "webhook"):
                sc.noop = measure_noop(sc, self.args.noop_calls, self.base, self.env)
                self.log(f"{sc.kind}: no-op reconcile() {sc.noop.describe()}")
        finally:
            if c is not None:
                code = c.stop()
                sc.stop_code = sc.stop_code if sc.stop_code is not None else code
            self.destroy(sc)

    def destroy(self, sc: Scenario) -> None:
        if not sc.state.exists():
            return
        try:
            done = subprocess.run(
                [*reconciler_cmd(), "--state", str(sc.state), "-d", DEPLOYMENT, "destroy", "--yes"],
                env=self.env,
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if done.returncode != 0:
                self.log(f"{sc.kind}: destroy exited {done.returncode}: {done.stderr[-1000:]}")
        except subprocess.TimeoutExpired:
            self.log(f"{sc.kind}: destroy did not finish within 120 s (killed)")
        if killed := kill_leftovers(sc.state.parent):
            self.log(f"{sc.kind}: killed {len(killed)} leftover processes")


def interval_s(sc: Scenario) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", sc.interval)
    if not m:
        raise ValueError(f"interval {sc.interval!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def _ours(root: Path) -> list[int]:
    needle, found = str(root).encode(), []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{name}/cmdline").read_bytes():
                    found.append(int(name))
    return found


def kill_leftovers(root: Path) -> list[int]:
    """SIGKILL the process group of every recorded instance still running under `root`
    (only processes whose command line names a path under it: ours)."""
    deadline = time.monotonic() + 15
    while any(b"agent.py" in _cmdline(p) for p in _ours(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    killed = []
    for pid_file in root.glob("**/deployments/*/instances/*/pid.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = int(json.loads(pid_file.read_text())["pid"])
            if str(root).encode() in _cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                    killed.append(pid)
    return killed


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# --- the no-op poll ------------------------------------------------------------------------


@dataclass
class Noop:
    repo: str
    first: float  # the call that handles the head (load, plan: unchanged)
    first_result: str
    calls: list[float]  # the timed calls, seconds
    results: set[str]
    git_commands: list[str]  # what the timed calls ran (the PATH wrapper's log)
    ls_remote: list[float]  # `git ls-remote` alone, as a subprocess
    passes: list[float]  # Controller.one_pass: reconcile + observe + conditions
    mirror_untouched: bool | None  # None: no mirror (local repository)
    mirror_note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.calls)

    @property
    def p95(self) -> float:
        return quantile(self.calls, 0.95)

    @property
    def per_call(self) -> dict[str, float]:
        counts: dict[str, int] = {}
        for cmd in self.git_commands:
            counts[cmd] = counts.get(cmd, 0) + 1
        return {k: v / len(self.calls) for k, v in sorted(counts.items())}

    @property
    def fetched(self) -> bool:
        return any(c in ("fetch", "clone", "pull") for c in self.per_call)

    def describe(self) -> str:
        gits = ", ".join(f"git {k} ×{v:g}" for k, v in self.per_call.items())
        return (
            f"median {ms(self.median)} ms, p95 {ms(self.p95)} ms over {len(self.calls)} "
            f"calls ({gits} per call; results {sorted(self.results)})"
        )


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


GIT_WRAPPER = """#!/bin/sh
printf '%s\\n' "$1" >> {log}
exec {git} "$@"
"""


def measure_noop(sc: Scenario, calls: int, base: Path, env: dict[str, str]) -> Noop:
    """DeploymentLoop.reconcile() in this process against the scenario's repository and
    state (the controller is stopped; the deployment is recorded at the head)."""
    real_git = shutil.which("git", path=env["PATH"])
    if real_git is None:
        raise RuntimeError("no git on PATH")
    wrap = base / "gitwrap"
    wrap.mkdir(exist_ok=True)
    log = wrap / f"{sc.kind}.log"
    (wrap / "git").write_text(GIT_WRAPPER.format(log=shlex.quote(str(log)), git=real_git))
    (wrap / "git").chmod(0o755)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    if sys.path[0] != str(SNAPSHOT_DIR):
        sys.path.insert(0, str(SNAPSHOT_DIR))
    try:
        return asyncio.run(_noop(sc, calls, wrap, log))
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def _noop(sc: Scenario, calls: int, wrap: Path, log: Path) -> Noop:
    from reconciler.commands.options import Options
    from reconciler.controller.run import Controller as RealController
    from reconciler.controller.run import RunSettings

    # The controller builds the loop as `reconciler run` would (the git dir it asks for a
    # local repository, the branch and interval from reconciler.yaml); never started.
    opts = Options(repo=sc.repo, state=str(sc.state), quiet=True)
    ctl = RealController(RunSettings(opts=opts, once=True))
    ctl.loop = asyncio.get_running_loop()
    await ctl.refresh_deployments()
    loop = ctl.loops[DEPLOYMENT]
    remote = str(getattr(loop, "remote", sc.repo))
    t = time.perf_counter()
    first = await loop.reconcile()
    first_s = time.perf_counter() - t
    if first.result != "unchanged":
        raise RuntimeError(f"no-op: the first call {first.result}: {first.message}")

    mirror = sc.state.parent / "repos" / hashlib.sha256(sc.repo.encode()).hexdigest()[:16]
    watched = [mirror / "FETCH_HEAD", mirror / "packed-refs", mirror / "refs" / "heads" / "main"]

    def mtimes() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in watched if p.exists()}

    before = mtimes() if sc.remote else {}
    os.environ["PATH"] = f"{wrap}{os.pathsep}{os.environ['PATH']}"
    log.write_text("")
    times, results = [], set()
    for _ in range(calls):
        t = time.perf_counter()
        out = await loop.reconcile()
        times.append(time.perf_counter() - t)
        results.add(out.result)
    commands = log.read_text().split()
    os.environ["PATH"] = os.environ["PATH"].split(os.pathsep, 1)[1]
    after = mtimes() if sc.remote else {}

    # For comparison: the ls-remote alone, and the controller's whole pass.
    ls_remote = []
    for _ in range(min(calls, 20)):
        t = time.perf_counter()
        subprocess.run(
            ["git", "ls-remote", "--", remote, "refs/heads/main"],
            capture_output=True,
            check=True,
        )
        ls_remote.append(time.perf_counter() - t)
    passes = []
    for _ in range(min(calls, 20)):
        t = time.perf_counter()
        await ctl.one_pass(loop)
        passes.append(time.perf_counter() - t)

    note = ""
    untouched: bool | None = None
    if sc.remote:
        untouched = bool(before) and before == after
        note = ", ".join(
            f"{k} {'unchanged' if before.get(k) == v else 'CHANGED'}" for k, v in after.items()
        )
    return Noop(
        repo="git daemon remote" if sc.remote else "local work tree",
        first=first_s,
        first_result=first.result,
        calls=times,
        results=results,
        git_commands=commands,
        ls_remote=ls_remote,
        passes=passes,
        mirror_untouched=untouched,
        mirror_note=note,
    )


# --- what the watcher sees ------------------------------------------------------------------


@dataclass(frozen=True)
class WatchEvents:
    version: str  # watchdog's
    commit: str  # events of one `git commit` that pass the controller's filter, by type
    first: str  # the first of them
    first_before: float  # s between it and the branch moving (the lock file renamed)
    ls_remote: str  # events of one `git ls-remote <git dir>`


def watch_events(base: Path, env: dict[str, str]) -> WatchEvents:
    """The watchdog events the controller's filter lets through for one `git commit` and
    one `git ls-remote` in a fresh repository (the filter copied from run.py's
    RefChanged): which kinds, and how early the first comes."""
    from importlib.metadata import version

    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    repo = base / "watch-events"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main", env=env)
    git(repo, "commit", "-q", "--allow-empty", "-m", "one", env=env)
    git_dir = repo / ".git"
    seen: list[tuple[float, str, str]] = []

    class Filter(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            path = str(event.src_path) + str(getattr(event, "dest_path", ""))
            if "/refs/" in path or path.endswith(("HEAD", "packed-refs")):
                name = str(event.src_path).removeprefix(str(git_dir) + "/")
                seen.append((time.perf_counter(), event.event_type, name))

    observer = Observer()
    observer.schedule(Filter(), str(git_dir / "refs"), recursive=True)
    observer.schedule(Filter(), str(git_dir), recursive=False)
    observer.start()
    try:
        time.sleep(0.3)

        def run(*args: str) -> list[tuple[float, str, str]]:
            seen.clear()
            git(repo, *args, env=env)
            time.sleep(0.5)
            return list(seen)

        commit = run("commit", "-q", "--allow-empty", "-m", "two")
        listing = run("ls-remote", "--", str(git_dir), "refs/heads/main")
    finally:
        observer.stop()
        observer.join()

    def kinds(events: list[tuple[float, str, str]]) -> str:
        counts: dict[str, int] = {}
        for _, kind, _ in events:
            counts[kind] = counts.get(kind, 0) + 1
        return f"{len(events)} (" + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) + ")"

    moved = next((t for t, kind, _ in commit if kind == "moved"), commit[-1][0] if commit else 0)
    first = commit[0] if commit else (0.0, "none", "")
    return WatchEvents(
        version=f"watchdog {version('watchdog')}",
        commit=kinds(commit),
        first=f"{first[1]} {first[2]}",
        first_before=moved - first[0],
        ls_remote=kinds(listing),
    )


# --- reporting -----------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def s2(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.2f}"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


TRIGGER_TEXT = {
    "watch": f"commit in the work tree; watchdog; `interval: {LONG_INTERVAL}`",
    "webhook": f"push to git daemon, then POST /hooks/git; `interval: {LONG_INTERVAL}`",
    "polling": "push to git daemon; `interval: {interval}`, no webhook",
}


def med_max(values: Sequence[float], digits: int = 2) -> str:
    if not values:
        return "–"
    return f"{statistics.median(values):.{digits}f} ({max(values):.{digits}f})"


def effective(sc: Scenario) -> list[float]:
    """Latencies, a lost commit counted as infinite (it would have waited for the poll)."""
    return [math.inf if s.lost else s.latency for s in sc.samples]


def lat(value: float, sc: Scenario) -> str:
    return f"> {sc.timeout:.0f} (lost)" if math.isinf(value) else f"{value:.2f}"


def latency_table(scenarios: Sequence[Scenario]) -> list[str]:
    lines = [
        "| trigger | how | runs | latency median s | latency max s | latency min s "
        "| trigger delay median (max) s | pass median (max) s | commit → attempt start "
        "median s | answer → pass end median s | pass end → idle median (max) s "
        "| first deploy s | load (1 min) start → end |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for sc in scenarios:
        if not sc.samples:
            continue
        values = effective(sc)
        ok = [s for s in sc.samples if not s.lost]  # the split is the nudge's when lost
        att = [s.attempt_start for s in ok if s.attempt_start is not None]
        lost = sum(s.lost for s in sc.samples)
        how = TRIGGER_TEXT[sc.kind].format(interval=sc.interval)
        lines.append(
            f"| {sc.kind} | {how} | {len(values)}{f' ({lost} lost)' if lost else ''} "
            f"| {lat(statistics.median(values), sc)} | {lat(max(values), sc)} "
            f"| {lat(min(values), sc)} "
            f"| {med_max([s.trigger for s in ok])} | {med_max([s.pass_seconds for s in ok])} "
            f"| {s2(statistics.median(att) if att else None)} "
            f"| {s2(statistics.median(s.tail for s in ok) if ok else None)} "
            f"| {med_max([s.settle for s in ok])} | {sc.first_deploy:.1f} "
            f"| {sc.load[0]:.1f} → {sc.load[1]:.1f} |"
        )
    return lines


def lost_lines(scenarios: Sequence[Scenario], events: WatchEvents | None) -> list[str]:
    out = []
    for sc in scenarios:
        lost = [s for s in sc.samples if s.lost]
        if not lost:
            continue
        text = (
            f"- {sc.kind}: {len(lost)} of {len(sc.samples)} commits (v"
            + ", v".join(str(s.n) for s in lost)
            + f") {'was' if len(lost) == 1 else 'were'} not deployed within "
            f"{sc.timeout:.0f} s although the controller was idle when "
            f"{'it was' if len(lost) == 1 else 'they were'} made; left alone, "
            f"{'it' if len(lost) == 1 else 'they'} would have waited for the next poll "
            f"({sc.interval}). Empty commits then brought "
            f"{'it' if len(lost) == 1 else 'them'}."
        )
        if sc.kind == "watch" and events is not None:
            text += (
                " A pass woken by one of git's reads (see *Watcher* above) can see the old "
                "head and find nothing to do; the events of the branch update arrive while "
                "it runs, and the loop clears its wake-up event when a pass ends "
                "(`forever()` in reconciler/controller/run.py, `d.wake.clear()` after "
                "`one_pass`), so they are dropped."
            )
        out.append(text)
    return out


def busy_lines(scenarios: Sequence[Scenario]) -> list[str]:
    out = []
    for sc in scenarios:
        b = sc.busy
        if b is None:
            continue
        if b.lost:
            out.append(
                f"- {sc.kind}: v{b.n}, committed while v{b.n - 1}'s apply ran, was **not "
                f"deployed within {sc.timeout:.0f} s**. Its trigger came during a pass, and "
                "the loop clears its wake-up event when a pass ends (`forever()` in "
                "reconciler/controller/run.py, `d.wake.clear()` after `one_pass`), so it was "
                f"dropped and the commit waits for the next poll ({sc.interval}). An empty "
                "commit"
                + (" and a new webhook" if sc.kind == "webhook" else "")
                + f" then brought it, {b.latency:.2f} s after the original commit."
            )
        else:
            out.append(
                f"- {sc.kind}: v{b.n}, committed while v{b.n - 1}'s apply ran, answered "
                f"{b.latency:.2f} s after its commit (trigger delay {b.trigger:.2f} s: it "
                f"waited for the apply in flight; its own pass {b.pass_seconds:.2f} s)."
            )
    return out


def watcher_lines(events: WatchEvents | None) -> list[str]:
    if events is None:
        return []
    return [
        f"*Watcher*: the controller's filter (`RefChanged` in reconciler/controller/run.py: "
        f"any event on a path under refs/ or ending in HEAD) also lets read events through: "
        f"with {events.version}, one `git commit` in a fresh repository gave "
        f"{events.commit} such events, the first ({events.first}) delivered "
        f"{events.first_before * 1000:.1f} ms before the branch's move was; one "
        f"`git ls-remote` of the git dir (what every pass runs) gave {events.ls_remote}. "
        "Any read of the refs wakes the loops.",
        "",
    ]


def run_list(scenarios: Sequence[Scenario]) -> list[str]:
    out = []
    for sc in scenarios:
        if sc.samples:
            out.append(
                f"- {sc.kind}: "
                + ", ".join(
                    f"> {sc.timeout:.0f} (lost)"
                    if s.lost
                    else f"{s.latency:.2f} ({s.trigger:.2f} + {s.pass_seconds:.2f}"
                    f"{'' if s.precise else ', from the log'})"
                    for s in sc.samples
                )
            )
    return out


def noop_table(scenarios: Sequence[Scenario]) -> list[str]:
    lines = [
        "| repository | calls | reconcile() median ms | p95 ms | max ms | git commands per call "
        "| fetch | first call (handles the head) ms | `git ls-remote` alone median ms "
        "| whole pass (reconcile + observe + conditions) median ms |",
        "|---|--:|--:|--:|--:|---|---|--:|--:|--:|",
    ]
    for sc in scenarios:
        n = sc.noop
        if n is None:
            continue
        gits = ", ".join(f"`{k}` ×{v:g}" for k, v in n.per_call.items()) or "none"
        if n.mirror_untouched is None:
            fetch = "none started (no mirror: a local repository)" if not n.fetched else "**yes**"
        elif not n.fetched and n.mirror_untouched:
            fetch = f"none started; mirror {n.mirror_note}"
        else:
            fetch = f"**yes** ({n.mirror_note})"
        lines.append(
            f"| {n.repo} | {len(n.calls)} | {ms(n.median)} | {ms(n.p95)} | {ms(max(n.calls))} "
            f"| {gits} | {fetch} | {ms(n.first)} | {ms(statistics.median(n.ls_remote))} "
            f"| {ms(statistics.median(n.passes))} |"
        )
    return lines


def goal_lines(scenarios: Sequence[Scenario]) -> list[str]:
    out = []
    for sc in scenarios:
        if sc.kind == "polling" or not sc.samples:
            continue
        values = effective(sc)
        med, worst = statistics.median(values), max(values)
        lost = sum(s.lost for s in sc.samples)
        out.append(
            f"- {sc.kind}: commit to active ≤ {GOAL_LATENCY:g} s — "
            f"{verdict(worst <= GOAL_LATENCY)} (median {lat(med, sc)} s = "
            f"{med / GOAL_LATENCY:.2f}× the goal, max {lat(worst, sc)} s"
            + (f" = {worst / GOAL_LATENCY:.2f}×" if not lost else f"; {lost} lost")
            + ")"
        )
        if sc.busy is not None:
            b = sc.busy
            out.append(
                "  - a commit made while an apply runs: "
                + (
                    f"**not met** (lost: not deployed within {sc.timeout:.0f} s)"
                    if b.lost
                    else f"{verdict(b.latency <= GOAL_LATENCY)} ({b.latency:.2f} s)"
                )
            )
        if math.isinf(med):
            continue
        for name, period, _ in PEERS:
            worst_text = (
                f"{period / worst:.0f}× worst case"
                if not lost
                else f"a lost commit waits up to our {sc.interval} poll"
            )
            out.append(
                f"  - against {name}'s default poll ({period:g} s: a commit waits "
                f"{period / 2:g} s on average, up to {period:g} s, before its deploy starts): "
                f"{period / 2 / med:.0f}× faster on average (median), {worst_text}"
            )
    for sc in scenarios:
        if sc.noop is None:
            continue
        n = sc.noop
        ok = n.p95 <= GOAL_NOOP and not n.fetched and n.mirror_untouched is not False
        out.append(
            f"- no-op poll, {n.repo}: ≤ {ms(GOAL_NOOP)} ms per deployment, no fetch — "
            f"{verdict(ok)} (median {ms(n.median)} ms = {n.median / GOAL_NOOP:.2f}× the goal, "
            f"p95 {ms(n.p95)} ms = {n.p95 / GOAL_NOOP:.2f}×; no fetch: "
            f"{'yes' if not n.fetched and n.mirror_untouched is not False else 'NO'})"
        )
    return out


def machine_facts() -> str:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout
    return (
        f"nproc {len(os.sched_getaffinity(0))} ({cpu}), load average {load} at the start, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"{git_version.strip()}"
    )


def report(
    args: argparse.Namespace,
    version: str,
    facts: str,
    seconds: float,
    scenarios: Sequence[Scenario],
    events: WatchEvents | None,
) -> str:
    now = dt.datetime.now(dt.UTC).isoformat(timespec="minutes")
    polling = next((sc for sc in scenarios if sc.kind == "polling"), None)
    lines = [
        SECTION,
        "",
        "<!-- Written by `bench/latency.py --write-results`; a new run replaces this section. -->",
        "",
        f"Date: {now}. Machine: {facts}; load average at the end "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}.",
        "",
        f"Measured: reconciler at {version}.",
        "",
        f"Command: `{args.command}` — {seconds:.0f} s in all, {args.repeat} commit"
        f"{'s' * (args.repeat != 1)} per trigger. Each trigger has its own controller "
        f"(`reconciler --repo REPO --state S run --listen {HOST}:0`, new state DB) deploying "
        "one `process` service (a Python HTTP server answering its version, health check "
        "`http: /`) to one `local` machine; every commit changes the program (a new store "
        "path, the instance replaced). *Latency*: from `git commit` (watch) or `git push` "
        "(remote) returning to the first answer with the new body (the bench asks every "
        f"{POLL_EVERY * 1000:.0f} ms). *Pass*: the pass that deployed the commit (ls-remote, "
        "load, validate, plan, the `reconciler apply` child), as its `web: <sha> applied in "
        "X s` log line says, to full precision from the controller's /metrics read before "
        "the commit and after the line (the increase of "
        "`reconciler_reconcile_duration_seconds_sum`, with `_count` up by exactly one; "
        "`reconciler_last_applied_timestamp_seconds` is when the pass ended). *Trigger "
        "delay*: the pass's start (end less duration) less the commit time: how long the "
        "commit waited before a pass looked at it (≤ 0: the pass began before `git "
        "commit` returned; lost commits are left out of this and the next columns). "
        "*Commit → attempt start*: the apply child's attempt `started_at` in the state DB"
        " (trigger, the pass's load and plan, the child's start-up and its own load and "
        "plan). *Answer → pass end*: what the pass does after the new version answers "
        "(record the generation, the child exits). *Pass end → idle*: until the "
        "controller's API shows the pass's document (stored after observing the machine; "
        "the loop waits for a trigger right after); the bench makes the next commit only "
        "then, plus a random 0.2–0.7 s (polling: 0–1.1 × the interval). A trigger that "
        "comes before that moment is lost (below).",
        "",
        *latency_table(scenarios),
        "",
        "Every run, latency s (trigger delay + pass s):",
        "",
        *run_list(scenarios),
        "",
    ]
    if polling and polling.samples:
        iv = interval_s(polling)
        trig = [s.trigger for s in polling.samples if not s.lost] or [math.nan]
        lines += [
            f"Polling at `interval: {polling.interval}` (±10 % jitter; the wait starts after "
            "a pass, observation included): a commit waits about half a period before a "
            f"pass sees it — expected ≈ {iv / 2:.1f} s, measured median "
            f"{statistics.median(trig):.2f} s, max {max(trig):.2f} s — then the pass (apply "
            "time) follows.",
            "",
        ]
    lines += watcher_lines(events)
    if lost := lost_lines(scenarios, events):
        lines += ["Lost commits:", "", *lost, ""]
    if busy := busy_lines(scenarios):
        lines += ["Commit during an apply (the second of two quick commits):", "", *busy, ""]
    webhook = next((sc for sc in scenarios if sc.kind == "webhook" and sc.samples), None)
    if webhook:
        hooks = [s.webhook_s for s in webhook.samples if s.webhook_s is not None]
        lines += [
            f'The webhook POST itself (202, `{{"poked": 1}}`) took {ms(statistics.median(hooks))}'
            f" ms median. Forges deliver a push event within a second or so; that delay is "
            "not in these figures (the bench posts as soon as `git push` returns).",
            "",
        ]
    stopped = [sc for sc in scenarios if sc.stop_code is not None]
    if stopped:
        lines += [
            "SIGTERM to exit, each controller idle (after its last pass): "
            + ", ".join(
                f"{sc.kind} {sc.stop_seconds:.2f} s (exit {sc.stop_code})" for sc in stopped
            )
            + ".",
            "",
        ]
    lines += [
        "### No-op poll",
        "",
        f"`DeploymentLoop.reconcile()` in-process (`asyncio.run`), {args.noop_calls} calls "
        "after one that handled the head (load and plan: `unchanged`), against the stopped "
        "controller's state DB; every timed call returned `idle`. *git commands per call*: "
        "logged by a `git` wrapper put first on PATH for the timed calls (a fetch would "
        "show as `git fetch`; GitPython's calls go through the same PATH). For the remote, "
        "the mirror's FETCH_HEAD, packed-refs and refs/heads/main mtimes before and after "
        "the calls are compared too. *Whole pass*: `Controller.one_pass` as the controller "
        "runs it every interval — the same reconcile, then observe the machine (instances, "
        "health), the self-heal check and the conditions written to the state DB (20 "
        "calls at most).",
        "",
        *noop_table(scenarios),
        "",
        "### Goals",
        "",
        *goal_lines(scenarios),
        "",
        "The peers' figures are their default poll periods only (apply time not included; "
        "each also takes webhooks — Argo CD and Flux receivers — which bring them to "
        "seconds too): " + "; ".join(f"{name} {why}" for name, _, why in PEERS) + ".",
    ]
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time commit-to-active latency of `reconciler run` (watch, webhook, "
        "polling) and the cost of a no-op poll."
    )
    p.add_argument("--quick", action="store_true", help="2 commits per trigger, 10 no-op calls")
    p.add_argument("--repeat", type=int, help="commits per trigger (10; quick 2)")
    p.add_argument(
        "--only",
        default="watch,webhook,polling",
        help="triggers to run, comma-separated: watch, webhook, polling (default all)",
    )
    p.add_argument("--poll-interval", default="2s", help="`interval` of the polling run (2s)")
    p.add_argument("--noop-calls", type=int, help="timed no-op reconcile() calls (50; quick 10)")
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for a new version before calling it lost (30)",
    )
    p.add_argument(
        "--no-busy", action="store_true", help="skip the commit-during-an-apply measurement"
    )
    p.add_argument(
        "--keep-path",
        action="store_true",
        help=f"give reconciler the caller's PATH, not {STANDARD_PATH}",
    )
    p.add_argument("--at", metavar="REF", help="measure reconciler/ as committed at REF")
    p.add_argument("--keep", type=Path, help="make repositories and state here and keep them")
    p.add_argument(
        "--write-results", action="store_true", help=f"write {SECTION} of bench/RESULTS.md"
    )
    args = p.parse_args(argv)
    args.repeat = args.repeat or (2 if args.quick else 10)
    args.noop_calls = args.noop_calls or (10 if args.quick else 50)
    if args.repeat < 1 or args.noop_calls < 1:
        p.error("--repeat and --noop-calls must be at least 1")
    args.kinds = [x.strip() for x in args.only.split(",") if x.strip()]
    if not args.kinds or set(args.kinds) - set(SERVICE_ADDRESS):
        p.error("--only takes watch, webhook and/or polling")
    if not re.fullmatch(r"\d+(\.\d+)?(ms|s|m|h)", args.poll_interval):
        p.error("--poll-interval: e.g. 2s, 500ms")
    given = sys.argv[1:] if argv is None else list(argv)
    args.command = shlex.join(["python3", "bench/latency.py", *given])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    facts = machine_facts()
    version = take_snapshot(args.at)
    log(f"measuring reconciler at {version}")
    if args.keep:
        base = args.keep.resolve()
        base.mkdir(parents=True, exist_ok=True)
        if any(base.iterdir()):
            raise SystemExit(f"--keep {base}: the folder is not empty")
    else:
        base = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    scenarios = [
        Scenario(kind, args.poll_interval if kind == "polling" else LONG_INTERVAL, args.timeout)
        for kind in ("watch", "webhook", "polling")
        if kind in args.kinds
    ]
    bench = Bench(args, base, log)
    events = None
    try:
        if "watch" in args.kinds:
            events = watch_events(base, bench.env)
            log(f"watch events: git commit {events.commit}; ls-remote {events.ls_remote}")
        if any(sc.remote for sc in scenarios):
            bench.start_daemon()
        for sc in scenarios:
            bench.run(sc)
    finally:
        bench.stop_daemon()
        if killed := kill_leftovers(base):
            log(f"killed {len(killed)} leftover processes")
        deadline = time.monotonic() + 10

        def leftover() -> list[int]:  # not this script (nor a wrapper naming --keep)
            return [p for p in _ours(base) if b"bench/latency.py" not in _cmdline(p)]

        while (leftovers := leftover()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in leftovers:
            cmdline = _cmdline(pid).replace(b"\0", b" ").decode(errors="replace")
            log(f"still running under {base}: {pid} {cmdline}")
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    text = report(args, version, facts, time.monotonic() - started, scenarios, events)
    print(text)
    if args.write_results:
        write_section(RESULTS_FILE, SECTION, text)
        log(f"wrote {SECTION!r} in {RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
