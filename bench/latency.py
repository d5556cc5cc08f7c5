#!/usr/bin/env python3
"""Benchmark commit-to-active latency of `reconciler run` (issue 5) with a watched work tree,
a webhook and polling, and the cost of a poll that finds nothing new. Goals: ≤ 2 s with watch
or webhook; ≤ 100 ms per no-op poll, no fetch. bench/README.md describes what is measured."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import os
import random
import re
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import harness as h  # beside this script

NAME = "latency"
DEPLOYMENT = "web"
HOST = "127.0.99.1"  # git daemon and the controllers' HTTP
SERVICE_ADDRESS = {"watch": "127.0.99.11", "webhook": "127.0.99.12", "polling": "127.0.99.13"}
LONG_INTERVAL = "5m"
POLL_EVERY = 0.02  # how often the bench asks the service for its body
GOAL_LATENCY, GOAL_NOOP = 2.0, 0.100  # s: watch and webhook; per no-op poll
# Default polling of the peers the issue names (what a commit waits before it is seen).
PEERS = (
    ("Argo CD", 180.0, "polls every 3 min by default (`timeout.reconciliation`)"),
    ("Flux", 60.0, "GitRepository `interval: 1m` as `flux bootstrap` writes it"),
    ("comin", 60.0, "polls every 60 s by default"),
)
HELLO = """#!/usr/bin/env python3
import http.server, os
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{message}")
    def log_message(self, *args):
        pass
http.server.HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Hello).serve_forever()
"""
_APPLIED = re.compile(rf"{DEPLOYMENT}: ([0-9a-f]{{12}}) (\w+) in ([0-9.]+) s")


class Controller:
    """`reconciler run` with its stderr read line by line, each line with the time it was
    read (and copied to a log file)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(cmd, env=env, cwd=log.parent, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     bufsize=1)  # fmt: skip
        self.reader = threading.Thread(target=self._read, args=(log,), daemon=True)
        self.reader.start()

    def _read(self, log: Path) -> None:
        assert self.proc.stderr is not None
        with log.open("w") as out:
            for line in self.proc.stderr:
                out.write(line)
                out.flush()
                with self.cond:
                    self.lines.append((time.time(), line.rstrip("\n")))
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

    def applied(self, shas: Sequence[str], after: float) -> tuple[str, float, float]:
        """The first `web: <sha> applied in X s` for one of `shas` read after `after`: which
        sha, when it was read, and X."""

        def match(line: str) -> tuple[str, float] | None:
            m = _APPLIED.search(line)
            if m and (found := next((s for s in shas if s.startswith(m.group(1))), None)):
                if m.group(2) != "applied":
                    raise RuntimeError(f"{found[:12]}: {line}")
                return found, float(m.group(3))
            return None

        at, (sha, seconds) = self.wait_line(match, after)
        return sha, at, seconds

    def tail(self, n: int = 30) -> str:
        return "\n".join(line for _, line in self.lines[-n:])

    def stop(self) -> int:
        code = h.stop(self.proc)
        self.reader.join(timeout=5)
        return code

    def apply_child(self) -> bool:
        """Whether an apply of the controller runs now: a fork of its zygote, or a child
        `reconciler … apply`."""
        up, me = h.parents(), self.proc.pid
        zygotes = {p for p, parent in up.items() if parent == me and b"zygote" in h.cmdline(p)}
        return any(
            parent in zygotes or (parent == me and b"\0apply\0" in h.cmdline(p))
            for p, parent in up.items()
        )


def wait_for(probe: Callable[[], bool], timeout: float) -> float | None:
    """Ask `probe` every POLL_EVERY s: the time it first said yes, None on timeout."""
    return h.wait_until(lambda: probe() and time.time(), timeout, POLL_EVERY) or None


def metrics(listen: str) -> tuple[float, float, float]:
    """From /metrics: passes that did something (idle ones are not counted), their total
    seconds (full precision), when a generation was last applied."""
    text = h.http(f"{listen}metrics")[1].decode()

    def value(name: str) -> float:
        m = re.search(rf'^reconciler_{name}{{deployment="{DEPLOYMENT}"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    count, total = (value(f"reconcile_duration_seconds_{x}") for x in ("count", "sum"))
    return count, total, value("last_applied_timestamp_seconds")


def post_push_event(listen: str, secret: str, clone_url: str) -> float:
    """A signed GitHub push event to /hooks/git: the seconds the request took."""
    body = json.dumps({"ref": "refs/heads/main", "repository": {"clone_url": clone_url}}).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push"}
    t0 = time.perf_counter()
    status, reply = h.http(
        f"{listen}hooks/git", body, headers | {"X-Hub-Signature-256": signature}, 10
    )
    if status != 202 or json.loads(reply).get("poked") != 1:
        raise RuntimeError(f"webhook: HTTP {status} {reply!r}")
    return time.perf_counter() - t0


@dataclass
class Sample:
    n: int  # version
    latency: float  # commit (or push) → new body answered
    pass_seconds: float  # the controller's "applied in X s"
    trigger: float  # commit → pass began (log line read − X)
    attempt_start: float | None  # commit → the apply child's attempt started
    tail: float  # new body answered → the pass ended
    precise: bool  # pass figures from /metrics (else the log line, 0.1 s resolution)
    settle: float  # the pass ended → the API shows it (observe)
    webhook_s: float | None = None  # the POST's round trip
    busy: bool = False  # committed while the previous commit's apply ran
    lost: bool = False  # not answered within the timeout; a new trigger was needed


@dataclass
class Noop:
    repo: str
    first: float  # the call that handles the head (load, plan: unchanged)
    calls: list[float]  # the timed calls, seconds
    results: set[str]
    git_commands: list[str]  # what the timed calls ran (the PATH wrapper's log)
    ls_remote: list[float]  # `git ls-remote` alone, as a subprocess
    passes: list[float]  # Controller.one_pass: reconcile + observe + conditions
    mirror_untouched: bool | None  # None: no mirror (local repository)
    mirror_note: str = ""

    @property
    def p95(self) -> float:
        return statistics.quantiles(self.calls, n=20, method="inclusive")[-1]

    @property
    def per_call(self) -> dict[str, float]:
        return {
            c: self.git_commands.count(c) / len(self.calls) for c in sorted(set(self.git_commands))
        }

    @property
    def fetched(self) -> bool:
        return bool({"fetch", "clone", "pull"} & set(self.git_commands))


@dataclass
class Scenario:
    kind: str  # watch | webhook | polling
    interval: str
    period: float  # polling: the interval in seconds (0: the others)
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

    def serves(self, n: int) -> bool:
        return h.answer(self.endpoint) == f"v{n}"


class Bench:
    def __init__(self, base: Path, keep_path: bool, timeout: float, log: h.Log) -> None:
        self.base, self.timeout, self.log = base, timeout, log
        self.env = h.child_env(standard_path=not keep_path)
        self.secret = secrets.token_hex(16)
        self.secret_file = base / "webhook-secret"
        self.secret_file.write_text(self.secret + "\n")
        self.served = base / "served"
        self.served.mkdir()
        self.daemon_port = 0

    def git(self, sc: Scenario, *args: str) -> str:
        return h.git(sc.work, *args, env=self.env)

    @contextlib.contextmanager
    def daemon(self) -> Iterator[None]:
        """One git daemon for the remote scenarios: every bare repository under served/."""
        self.daemon_port = port = h.free_port(HOST)
        cmd = ["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
               f"--listen={HOST}", f"--port={port}", f"--base-path={self.served}",
               str(self.served)]  # fmt: skip
        with h.background(cmd, self.env):
            h.wait_for("git daemon", lambda: h.listening(HOST, self.daemon_port), 10)
            yield

    def prepare(self, sc: Scenario) -> None:
        root = self.base / sc.kind
        sc.work, sc.state = root / "work", root / "controller" / "state.db"
        sc.state.parent.mkdir(parents=True)
        address = SERVICE_ADDRESS[sc.kind]
        port = h.free_port(address)
        sc.endpoint = f"http://{address}:{port}/"
        h.write_program(h.new_repo(sc.work) / "hello" / "bin" / "hello", HELLO.format(message="v1"))
        hello = h.service(port, package="hello", command="bin/hello",
                          healthCheck={"http": "/", "timeout": "20s"})  # fmt: skip
        models = {"machines": {"m1": {"deployment": {"targetEnv": "local", "address": address}}},
                  "packages": {"hello": {"src": "hello"}}, "services": {"hello": hello},
                  "distribution": {"hello": ["m1"]}, "description": "bench/latency.py"}  # fmt: skip
        h.commit_models(sc.work, "hello v1", {"models.yaml": models}, {DEPLOYMENT: ["models.yaml"]},
                        branch="main", interval=sc.interval, selfHeal=True)  # fmt: skip
        sc.repo = str(sc.work)
        if sc.remote:
            h.git(self.served, "init", "-q", "--bare", "-b", "main", f"{sc.kind}.git", env=self.env)
            sc.repo = f"git://{HOST}:{self.daemon_port}/{sc.kind}.git"
            self.git(sc, "remote", "add", "origin", sc.repo)
            self.git(sc, "push", "-q", "origin", "main")

    def commit(self, sc: Scenario, n: int | None) -> tuple[float, float | None]:
        """Version n (None: an empty commit) committed, pushed for a remote, posted to the
        webhook for webhook: when the push returned, and how long the POST took. Nothing else
        touches the repository until the new version answers."""
        if n is None:
            self.git(sc, "commit", "-q", "--allow-empty", "-m", "nudge")
        else:
            h.write_program(sc.work / "hello" / "bin" / "hello", HELLO.format(message=f"v{n}"))
            self.git(sc, "commit", "-q", "-am", f"hello v{n}")
        if sc.remote:
            self.git(sc, "push", "-q", "origin", "main")
        pushed = time.time()
        hook = post_push_event(sc.listen, self.secret, sc.repo) if sc.kind == "webhook" else None
        return pushed, hook

    def head(self, sc: Scenario) -> str:
        return self.git(sc, "rev-parse", "HEAD")

    def idle(self, sc: Scenario, sha: str, timeout: float) -> float | None:
        """When the controller's API first shows that the pass that handled `sha` ended (its
        document is stored at the end of a pass; the loop then waits for a trigger)."""

        def shown() -> bool:
            doc = json.loads(h.answer(f"{sc.listen}api/deployments/{DEPLOYMENT}", 2) or "{}")
            return bool((doc.get("controller") or {}).get("head") == sha)

        return wait_for(shown, timeout)

    def nudge(self, sc: Scenario, c: Controller, n: int) -> list[str]:
        """Empty commits (and webhooks) until the service answers version n; their shas."""
        shas = []
        for _ in range(3):
            self.commit(sc, None)
            shas.append(self.head(sc))
            if wait_for(lambda: sc.serves(n), 20) is not None:
                return shas
        raise RuntimeError(f"{sc.kind}: v{n} never answered:\n{c.tail()}")

    def settle(self, sc: Scenario, c: Controller) -> None:
        """Until the controller has handled the work tree's head and is idle."""
        for _ in range(3):
            if self.idle(sc, self.head(sc), 15) is not None:
                return
            self.commit(sc, None)
        raise RuntimeError(f"{sc.kind}: the controller does not follow the head:\n{c.tail()}")

    def measure(self, sc: Scenario, c: Controller, n: int, busy: bool = False) -> Sample:
        """Commit version n, trigger, wait for it to answer. A version not answering within
        the timeout is lost: empty commits then bring it (to go on measuring)."""
        before = metrics(sc.listen)
        t0, hook = self.commit(sc, n)
        timeout = max(self.timeout, 3 * sc.period)
        t1 = wait_for(lambda: sc.serves(n), timeout)
        candidates = [self.head(sc)]
        if t1 is None:
            self.log(f"{sc.kind}: v{n} not answered within {timeout:.0f} s; empty commits")
            candidates += self.nudge(sc, c, n)
        sha, at, seconds = c.applied(candidates, t0 - 1)
        attempt = h.last_attempt(sc.state, DEPLOYMENT, sha)
        idle = self.idle(sc, sha, 120)
        if idle is None:
            raise RuntimeError(f"{sc.kind}: the controller never showed {sha[:12]} as its head")
        if t1 is None:  # the last empty commit deployed too, the controller idle again
            self.settle(sc, c)
        count, total, applied_at = metrics(sc.listen)
        precise = count - before[0] == 1 and applied_at > t0
        if precise:  # one pass did something: its exact duration and end
            seconds, at = total - before[1], applied_at
        answered = t1 or time.time()
        return Sample(
            n, answered - t0, seconds, at - seconds - t0, attempt.started - t0 if attempt else None,
            at - answered, precise, idle - at, hook, busy, t1 is None,
        )  # fmt: skip

    def busy_probe(self, sc: Scenario, c: Controller, n: int) -> Sample:
        """Version n-1 committed, then version n as soon as n-1's apply child runs: the
        latency of version n. When n-1 starts no apply within 10 s, it is brought by empty
        commits and the probe starts again with the next versions."""
        for _ in range(3):
            self.commit(sc, n - 1)
            if wait_for(c.apply_child, 10) is not None:
                return self.measure(sc, c, n, busy=True)
            self.log(f"{sc.kind}: no apply for v{n - 1} within 10 s; empty commits, again")
            t = time.time()
            c.applied([self.head(sc), *self.nudge(sc, c, n - 1)], t - 60)
            self.settle(sc, c)
            time.sleep(0.5)
            n += 2
        raise RuntimeError(f"{sc.kind}: no apply started for the busy probe:\n{c.tail()}")

    def run(self, sc: Scenario, repeat: int, busy: bool, noop_calls: int) -> None:
        load0 = os.getloadavg()[0]
        self.prepare(sc)
        c: Controller | None = None
        try:
            t_start = time.time()
            cmd = [*h.reconciler_cmd(sc.repo, sc.state), "run", "--listen", f"{HOST}:0"]
            if sc.kind == "webhook":
                cmd += ["--webhook-secret-file", str(self.secret_file)]
            c = Controller(cmd, self.env, sc.state.parent.parent / "controller.log")
            _, m = c.wait_line(lambda line: re.search(r"listening on (http://\S+/)", line))
            sc.listen = m.group(1)
            self.log(f"{sc.kind}: controller on {sc.listen}, repo {sc.repo}")
            if wait_for(lambda: sc.serves(1), 180) is None:
                raise RuntimeError(f"{sc.kind}: v1 never answered:\n{c.tail()}")
            sc.first_deploy = time.time() - t_start
            head = self.head(sc)
            c.applied([head], 0)
            self.idle(sc, head, 120)
            n = 1
            for _ in range(repeat):
                # A pause: anywhere in the poll cycle for polling, a short one otherwise.
                time.sleep(random.uniform(*((0.0, 1.1 * sc.period) if sc.period else (0.2, 0.7))))
                n += 1
                s = self.measure(sc, c, n)
                sc.samples.append(s)
                self.log(f"{sc.kind} v{n}: {s.latency:.3f} s (trigger {s.trigger:.2f} s, pass "
                         f"{s.pass_seconds:.1f} s)" + (" LOST" if s.lost else ""))  # fmt: skip
            if sc.kind != "polling" and busy:
                time.sleep(0.5)
                sc.busy = self.busy_probe(sc, c, n + 2)
                self.log(f"{sc.kind} v{sc.busy.n}, during an apply: {sc.busy.latency:.3f} s")
            sc.load = (load0, os.getloadavg()[0])
            # A read of the watched refs (the bench's `git rev-parse`) wakes the controller
            # too; let such a pass end before the SIGTERM.
            time.sleep(1.0)
            t = time.perf_counter()
            sc.stop_code = c.stop()
            sc.stop_seconds = time.perf_counter() - t
            if sc.kind in ("watch", "webhook"):
                sc.noop = measure_noop(sc, noop_calls, self.base, self.env)
                self.log(f"{sc.kind}: no-op reconcile() {h.ms(sc.noop.p95)} ms p95")
        finally:
            if c is not None and sc.stop_code is None:  # else stopped already
                sc.stop_code = c.stop()
            self.destroy(sc)

    def destroy(self, sc: Scenario) -> None:
        if sc.state.exists():
            cmd = [*h.reconciler_cmd(state=sc.state, deployment=DEPLOYMENT), "destroy", "--yes"]
            if (done := h.run(cmd, self.env, cwd=self.base, check=False, timeout=120)).code:
                self.log(f"{sc.kind}: destroy exited {done.code}: {done.stderr[-1000:]}")
            h.kill_leftovers(sc.state.parent)


def measure_noop(sc: Scenario, calls: int, base: Path, env: dict[str, str]) -> Noop:
    """The controller's loop's reconcile() in this process against the scenario's repository
    and state (the controller is stopped; the deployment is recorded at the head), with a
    `git` wrapper first on PATH logging every git command of the timed calls."""
    real_git = shutil.which("git", path=env["PATH"])
    wrap = base / "gitwrap"
    log = wrap / f"{sc.kind}.log"
    h.write_program(wrap / "git", f'#!/bin/sh\nprintf \'%s\\n\' "$1" >> {shlex.quote(str(log))}\n'
                                  f'exec {real_git} "$@"\n')  # fmt: skip
    h.import_snapshot()
    with mock.patch.dict(os.environ, env, clear=True):  # the environment of the controller
        return asyncio.run(_noop(sc, calls, wrap, log))


async def _noop(sc: Scenario, calls: int, wrap: Path, log: Path) -> Noop:
    ctl = await h.controller(sc.repo, sc.state)
    loop = ctl.loops[DEPLOYMENT]
    t = time.perf_counter()
    first = await loop.reconcile()
    first_s = time.perf_counter() - t
    if first.result != "unchanged":
        raise RuntimeError(f"no-op: the first call {first.result}: {first.message}")
    mirror = h.mirror_dir(sc.state, sc.repo)
    watched = [mirror / "FETCH_HEAD", mirror / "packed-refs", mirror / "refs" / "heads" / "main"]

    def mtimes() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in watched if p.exists()} if sc.remote else {}

    async def timed(call: Callable[[], Any], n: int, results: bool = True) -> list[float]:
        """Seconds of each of n calls (awaited, their results noted with `results`)."""
        out = []
        for _ in range(n):
            t = time.perf_counter()
            if asyncio.iscoroutine(done := call()) and (got := await done) and results:
                noted.add(got.result)
            out.append(time.perf_counter() - t)
        return out

    noted: set[str] = set()
    before = mtimes()
    log.write_text("")
    with mock.patch.dict(os.environ, PATH=f"{wrap}{os.pathsep}{os.environ['PATH']}"):
        times = await timed(loop.reconcile, calls)
    commands, after = log.read_text().split(), mtimes()
    # For comparison: the ls-remote alone, and the controller's whole pass.
    remote = str(getattr(loop, "remote", sc.repo))
    ls = ["git", "ls-remote", "--", remote, "refs/heads/main"]
    ls_remote = await timed(
        lambda: subprocess.run(ls, capture_output=True, check=True), min(calls, 20)
    )
    passes = await timed(lambda: ctl.one_pass(loop), min(calls, 20), results=False)
    note = ", ".join(
        f"{k} {'unchanged' if before.get(k) == v else 'CHANGED'}" for k, v in after.items()
    )
    return Noop(
        "git daemon remote" if sc.remote else "local work tree", first_s, times, noted, commands,
        ls_remote, passes, (bool(before) and before == after) if sc.remote else None, note,
    )  # fmt: skip


def med_max(values: Sequence[float | None]) -> str:
    got = [v for v in values if v is not None]
    return f"{statistics.median(got):.2f} ({max(got):.2f})" if got else "–"


def effective(sc: Scenario) -> list[float]:
    """Latencies, a lost commit counted as infinite (it would have waited for the poll)."""
    return [math.inf if s.lost else s.latency for s in sc.samples]


def lat(value: float, sc: Scenario) -> str:
    return f"> {sc.timeout:.0f} (lost)" if math.isinf(value) else f"{value:.2f}"


def latency_table(scenarios: Sequence[Scenario]) -> list[str]:
    how = {
        "watch": f"commit in the work tree; watchdog; `interval: {LONG_INTERVAL}`",
        "webhook": f"push to git daemon, then POST /hooks/git; `interval: {LONG_INTERVAL}`",
        "polling": "push to git daemon; `interval: {}`, no webhook",
    }
    lines = [
        "| trigger | how | runs | latency median s | latency max s | latency min s | trigger "
        "delay median (max) s | pass median (max) s | commit → attempt start median (max) s "
        "| answer → pass end median (max) s | pass end → idle median (max) s | first deploy s "
        "| load (1 min) start → end |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for sc in (sc for sc in scenarios if sc.samples):
        values, ok = effective(sc), [s for s in sc.samples if not s.lost]
        lost = sum(s.lost for s in sc.samples)
        lines.append(
            f"| {sc.kind} | {how[sc.kind].format(sc.interval)} | {len(values)}"
            f"{f' ({lost} lost)' if lost else ''} | {lat(statistics.median(values), sc)} "
            f"| {lat(max(values), sc)} | {lat(min(values), sc)} "
            f"| {med_max([s.trigger for s in ok])} "
            f"| {med_max([s.pass_seconds for s in ok])} | {med_max([s.attempt_start for s in ok])} "
            f"| {med_max([s.tail for s in ok])} | {med_max([s.settle for s in ok])} "
            f"| {sc.first_deploy:.1f} | {sc.load[0]:.1f} → {sc.load[1]:.1f} |"
        )
    return lines


def event_lines(scenarios: Sequence[Scenario]) -> list[str]:
    """Each run, lost commits and the commits made during an apply."""
    out = []
    for sc in (sc for sc in scenarios if sc.samples):
        out.append(f"- {sc.kind}, latency s (trigger delay + pass s): " + ", ".join(
            f"> {sc.timeout:.0f} (lost)" if s.lost else f"{s.latency:.2f} ({s.trigger:.2f} + "
            f"{s.pass_seconds:.2f}{'' if s.precise else ', from the log'})" for s in sc.samples
        ))  # fmt: skip
        if lost := [s for s in sc.samples if s.lost]:
            out.append(
                f"- {sc.kind}: v" + ", v".join(str(s.n) for s in lost) + f" not deployed within "
                f"{sc.timeout:.0f} s although the controller was idle; left alone, it would have "
                f"waited for the next poll ({sc.interval}); empty commits then brought it."
            )
        if (b := sc.busy) is not None:
            out.append(
                f"- {sc.kind}: v{b.n}, committed while v{b.n - 1}'s apply ran, "
                + (f"was **not deployed within {sc.timeout:.0f} s** (an empty commit brought it, "
                   f"{b.latency:.2f} s after the commit)." if b.lost else
                   f"answered {b.latency:.2f} s after its commit (trigger delay {b.trigger:.2f} s: "
                   f"it waited for the apply in flight; its own pass {b.pass_seconds:.2f} s).")
            )  # fmt: skip
    return out


def noop_table(scenarios: Sequence[Scenario]) -> list[str]:
    lines = [
        "| repository | calls | reconcile() median ms | p95 ms | max ms | git commands per call "
        "| fetch | first call (handles the head) ms | `git ls-remote` alone median ms "
        "| whole pass (reconcile + observe + conditions) median ms |",
        "|---|--:|--:|--:|--:|---|---|--:|--:|--:|",
    ]
    for n in (sc.noop for sc in scenarios if sc.noop):
        gits = ", ".join(f"`{k}` ×{v:g}" for k, v in n.per_call.items()) or "none"
        if n.mirror_untouched is None:
            fetch = "**yes**" if n.fetched else "none started (no mirror: a local repository)"
        else:
            ok = not n.fetched and n.mirror_untouched
            fetch = f"none started; mirror {n.mirror_note}" if ok else f"**yes** ({n.mirror_note})"
        lines.append(
            f"| {n.repo} | {len(n.calls)} | {h.ms(statistics.median(n.calls))} | {h.ms(n.p95)} "
            f"| {h.ms(max(n.calls))} | {gits} | {fetch} | {h.ms(n.first)} "
            f"| {h.ms(statistics.median(n.ls_remote))} | {h.ms(statistics.median(n.passes))} |"
        )
    return lines


def goal_lines(scenarios: Sequence[Scenario]) -> list[str]:
    out = []
    for sc in (sc for sc in scenarios if sc.kind != "polling" and sc.samples):
        values = effective(sc)
        med, worst, lost = statistics.median(values), max(values), sum(s.lost for s in sc.samples)
        out.append(
            f"- {sc.kind}: commit to active ≤ {GOAL_LATENCY:g} s — "
            f"{h.verdict(worst <= GOAL_LATENCY)} "
            f"(median {lat(med, sc)} s = {med / GOAL_LATENCY:.2f}× the goal, max {lat(worst, sc)} s"
            + (f" = {worst / GOAL_LATENCY:.2f}×)" if not lost else f"; {lost} lost)")
        )
        if (b := sc.busy) is not None:
            out.append(
                "  - a commit made while an apply runs: "
                + (f"**not met** (lost: not deployed within {sc.timeout:.0f} s)" if b.lost
                   else f"{h.verdict(b.latency <= GOAL_LATENCY)} ({b.latency:.2f} s)")
            )  # fmt: skip
        for name, period, _ in PEERS if not math.isinf(med) else ():
            out.append(
                f"  - against {name}'s default poll ({period:g} s: a commit waits "
                f"{period / 2:g} s on average, up to {period:g} s, before its deploy starts): "
                f"{period / 2 / med:.0f}× faster on average (median), "
                + (
                    "a lost commit waits for our poll"
                    if lost
                    else f"{period / worst:.0f}× worst case"
                )
            )
    for n in (sc.noop for sc in scenarios if sc.noop):
        no_fetch = not n.fetched and n.mirror_untouched is not False
        med = statistics.median(n.calls)
        out.append(
            f"- no-op poll, {n.repo}: ≤ {h.ms(GOAL_NOOP)} ms per deployment, no fetch — "
            f"{h.verdict(n.p95 <= GOAL_NOOP and no_fetch)} (median {h.ms(med)} ms = "
            f"{med / GOAL_NOOP:.2f}× the goal, p95 {h.ms(n.p95)} ms = {n.p95 / GOAL_NOOP:.2f}×; "
            f"no fetch: {'yes' if no_fetch else 'NO'})"
        )
    return out


def report(b: h.Bench, scenarios: Sequence[Scenario]) -> list[str]:
    n, noop_calls = b.args.repeat, b.args.noop_calls
    lines = [
        *b.header(f"{n} commit{'s' * (n != 1)} per trigger"),
        *latency_table(scenarios),
        "",
        *event_lines(scenarios),
        "",
    ]
    if hooks := [s.webhook_s for sc in scenarios for s in sc.samples if s.webhook_s is not None]:
        took = h.ms(statistics.median(hooks))
        lines += [f'The webhook POST itself (202, `{{"poked": 1}}`) took {took} ms median (a '
                  "forge's own delivery delay is not in these figures).", ""]  # fmt: skip
    if stopped := [sc for sc in scenarios if sc.stop_code is not None]:
        each = (f"{sc.kind} {sc.stop_seconds:.2f} s (exit {sc.stop_code})" for sc in stopped)
        lines += ["SIGTERM to exit, each controller idle: " + ", ".join(each) + ".", ""]
    lines += [
        "### No-op poll",
        "",
        f"{noop_calls} timed calls of the controller's loop's `reconcile()` in-process, after one "
        "that handled the head; *whole pass*: `one_pass` (reconcile, observe, conditions).",
        "",
        *noop_table(scenarios),
        "",
        "### Goals",
        "",
        *goal_lines(scenarios),
        "",
        "The peers' figures are their default poll periods only (each also takes webhooks): "
        + "; ".join(f"{name} {why}" for name, _, why in PEERS)
        + ".",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    b = h.Bench(NAME, __doc__, "1 commit per trigger, polling 1s, 5 no-op calls", repeat=10)
    add = b.options.add_argument
    add("--only", default="watch,webhook,polling", help="triggers (all three)")
    add("--poll-interval", type=float, help="s: `interval` of the polling run (2; quick 1)")
    add("--noop-calls", type=int, help="timed no-op reconcile() calls (50; quick 5)")
    add("--timeout", type=float, default=30.0, help="s before a version is lost (30)")
    add("--no-busy", action="store_true", help="skip the commit during an apply")
    add("--keep-path", action="store_true", help="give reconciler the caller's PATH")
    args = b.start(argv, h.first_line(["git", "--version"]))
    args.noop_calls = args.noop_calls or (5 if args.quick else 50)
    period = args.poll_interval or (1.0 if args.quick else 2.0)
    kinds = [x.strip() for x in args.only.split(",") if x.strip()]
    if args.noop_calls < 1 or period <= 0 or not kinds or set(kinds) - set(SERVICE_ADDRESS):
        b.options.error(
            "--noop-calls at least 1; --poll-interval > 0; --only of watch, webhook, polling"
        )
    scenarios = [Scenario(k, f"{period:g}s", period, args.timeout) if k == "polling"
                 else Scenario(k, LONG_INTERVAL, 0.0, args.timeout)
                 for k in SERVICE_ADDRESS if k in kinds]  # fmt: skip
    with h.workspace(NAME) as base, contextlib.ExitStack() as daemon:
        bench = Bench(base, args.keep_path, args.timeout, b.log)
        if any(sc.remote for sc in scenarios):
            daemon.enter_context(bench.daemon())
        for sc in scenarios:
            bench.run(sc, args.repeat, not args.no_busy, args.noop_calls)
    return b.publish(report(b, scenarios))


if __name__ == "__main__":
    sys.exit(main())
