#!/usr/bin/env python3
"""Benchmark rolling replacement and failover (SPEC §9, §10; issue 12): a 3- and a 10-instance
service upgraded with maxUnavailable 1 and 25 % — wall time against the instances' start-up
times, and the fewest answering at once (the guarantee) — and the time from a machine's loss
to its policy-placed instance answering elsewhere. bench/README.md describes what is measured."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness as h  # beside this script

NAME, DEPLOYMENT = "rollout", "roll"
# instances, maxUnavailable
CONFIGS: list[tuple[int, int | str]] = [(3, 1), (3, "25%"), (10, 1), (10, "25%")]
DELAY, QUICK_DELAY = 0.2, 0.05  # the program's start-up before it listens
PORT, PERIOD = 9200, 0.05  # the prober asks every instance every PERIOD s
AFTER, INTERVAL = 2, 1  # failover: {after: 2s}, interval: 1s
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def answers(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def get(url: str) -> Any:
    with _OPENER.open(url, timeout=5) as answer:
        return json.loads(answer.read())


class Prober(threading.Thread):
    """Asks every instance at once every PERIOD s until stopped: the fewest that answered."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls, self.fewest, self.stop = urls, len(urls), threading.Event()

    def run(self) -> None:
        with ThreadPoolExecutor(len(self.urls)) as pool:
            while not self.stop.is_set():
                began = time.monotonic()
                self.fewest = min(self.fewest, sum(pool.map(answers, self.urls)))
                self.stop.wait(max(0.0, PERIOD - (time.monotonic() - began)))


def models(machines: dict[str, Any], web: dict[str, Any], placed: Any) -> dict[str, Any]:
    web = {"package": "svc", "command": "bin/svc", "port": PORT,
           "healthCheck": {"http": "/", "timeout": "10s"}, **web}  # fmt: skip
    return {"machines": machines, "packages": {"svc": {"src": "packages/svc"}},
            "services": {"web": web}, "distribution": {"web": placed}}  # fmt: skip


def new_repo(work: Path) -> Path:
    repo = h.new_repo(work / "models")
    h.write_program(repo / "packages" / "svc" / "bin" / "svc", h.SERVICE)
    return repo


@dataclass
class Roll:
    n: int
    policy: int | str
    size: int  # maxUnavailable as a count: the first batch's instances
    batches: int
    wall: float  # the upgrade's apply
    window: float  # last switch-profile end → last batch end
    startup: float  # per batch the slowest fork → listening, summed
    fewest: int  # the fewest instances answering in one round of the prober


def roll_once(n: int, policy: int | str, delay: float, work: Path, log: h.Log) -> Roll:
    """n `local` machines (127.0.78.1…), one instance on each: deploy version 1, time the
    upgrade to version 2 under the prober, destroy."""
    repo, state = new_repo(work), work / "state.db"
    base = [*h.reconciler_cmd(), "--repo", str(repo), "--state", str(state), "-d", DEPLOYMENT]
    env = h.child_env(standard_path=True)
    machines = {f"m{i:02d}": {"deployment": {"targetEnv": "local", "address": f"127.0.78.{i}"}}
                for i in range(1, n + 1)}  # fmt: skip
    try:
        for version in (1, 2):
            web = {"env": {"DELAY": f"{delay:g}", "VERSION": str(version)},
                   "rollout": {"maxUnavailable": policy}}  # fmt: skip
            h.write_models(repo, {"m.yaml": models(machines, web, sorted(machines))},
                           {DEPLOYMENT: ["m.yaml"]})  # fmt: skip
            h.commit(repo, f"version {version}")
            if version == 1:
                h.run([*base, "apply", "--yes"], env, timeout=300)
        prober = Prober([f"http://127.0.78.{i}:{PORT}/" for i in range(1, n + 1)])
        prober.start()
        try:
            ran = h.run([*base, "apply", "--yes"], env, timeout=300)
        finally:
            prober.stop.set()
            prober.join()
        attempt = h.last_attempt(state, DEPLOYMENT)
        assert attempt is not None and attempt.status == "succeeded", attempt
        batches = [s.detail["instances"] for s in attempt.transition if s.action == "rollout-batch"]
        start = max(s.at for s in attempt.transition if s.action == "switch-profile")
        end = max(s.at for s in attempt.transition if s.action == "rollout-batch")
        startup = sum(max(started(state, key) for key in batch) for batch in batches)
        h.run([*base, "destroy", "--yes"], env, timeout=300)
        return Roll(n, policy, len(batches[0]), len(batches), ran.wall, end - start, startup,
                    prober.fewest)  # fmt: skip
    finally:
        if killed := h.kill_leftovers(work):
            log(f"killed {len(killed)} leftover processes")


def started(state: Path, key: str) -> float:
    """The instance's last start-up, fork → listening, from its log."""
    machine = state.parent / "machines" / key.split("@")[1]
    log = machine / "deployments" / DEPLOYMENT / "instances" / "web" / "log"
    got = [json.loads(x)["bench"] for x in log.read_text().splitlines() if '{"bench"' in x][-1]
    return float(got["ready"] - got["forked"])


@dataclass
class Failover:
    noticed: float  # from the cut to `unreachable since` (history's reason; whole seconds)
    failed: float  # … to the machine's `failedSince`
    applied: float  # … to the failover attempt's start
    answering: float  # … to the instance answering on another host


def failover(work: Path) -> Failover:
    """A controller, 3 test hosts, one instance placed by policy: cut its host's link."""
    with h.host_network(3, work / "net") as net:
        hosts = {f"m{i + 1}": host for i, host in enumerate(net.hosts)}
        repo, state, port = new_repo(work), work / "state.db", h.free_port()
        machines = {m: {"deployment": {"targetEnv": "ssh", "ssh": {"host": x.address,
                    "identityFile": str(x.identity_file), "hostKey": x.host_key}}}
                    for m, x in hosts.items()}  # fmt: skip
        h.write_models(repo, {"m.yaml": models(machines, {}, {"replicas": 1})},
                       {DEPLOYMENT: ["m.yaml"]}, interval=f"{INTERVAL}s",
                       failover={"after": f"{AFTER}s"})  # fmt: skip
        h.commit(repo, "failover")
        api = f"http://127.0.0.1:{port}/api/deployments/{DEPLOYMENT}"
        cmd = [*h.reconciler_cmd(), "--repo", str(repo), "--state", str(state), "run",
               "--listen", f"127.0.0.1:{port}"]  # fmt: skip
        with (work / "controller.log").open("w") as out:
            ctl = subprocess.Popen(cmd, env=h.child_env(), stdout=out, stderr=out)
        try:
            first = wait(lambda: active_on(api), 120, "the first generation")
            others = [f"http://{x.address}:{PORT}/" for m, x in hosts.items() if m != first]
            net.cut(hosts[first])
            cut = time.time()
            wait(lambda: any(answers(u) for u in others), 120, "an answer elsewhere", 0.02)
            answering = time.time() - cut
            failed = wait(lambda: machine(api, first).get("failedSince"), 60, "failedSince")
            attempt, why = h.last_attempt(state, DEPLOYMENT), get(f"{api}/history")[0]["reason"]
            assert attempt is not None and why.startswith(f"failover: {first} "), why
            noticed = h.stamp(why.split(" since ")[1]) - cut
            return Failover(noticed, h.stamp(failed) - cut, attempt.started - cut, answering)
        finally:
            ctl.send_signal(signal.SIGTERM)
            ctl.wait(timeout=60)


def machine(api: str, name: str) -> dict[str, Any]:
    return next(m for m in get(api)["machines"] if m["name"] == name)


def active_on(api: str) -> str | None:
    """The one machine where web is active (None while the API does not answer yet)."""
    try:
        on = [i["machine"] for i in get(api).get("instances", []) if i["state"] == "active"]
    except OSError:
        return None
    return on[0] if len(on) == 1 else None


def wait(probe: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := probe()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout} s: {what}")
        time.sleep(every)
    return got


def report(command: str, facts: str, version: str, seconds: float, rolls: list[list[Roll]],
           fail: list[Failover] | str, delay: float, repeat: int) -> str:  # fmt: skip
    summary = (f"{seconds:.0f} s in all, best of {repeat} per configuration (fewest answering: "
               f"of all runs), start-up DELAY {h.ms(delay)} ms")  # fmt: skip
    lines = [*h.header(NAME, facts, version, command, summary),
             "| instances | maxUnavailable | batches | apply s | rollout window s | Σ start-up s "
             "| overhead ms per batch | fewest answering | guarantee |",
             "|---|---|--:|--:|--:|--:|--:|--:|---|"]  # fmt: skip
    for runs in rolls:
        b, fewest = min(runs, key=lambda r: r.wall), min(r.fewest for r in runs)
        lines.append(
            f"| {b.n} | {b.policy} | {b.batches} | {b.wall:.2f} | {b.window:.2f} "
            f"| {b.startup:.2f} | {h.ms((b.window - b.startup) / b.batches)} | {fewest} "
            f"| ≥ {b.n - b.size}: {'kept' if fewest >= b.n - b.size else '**broken**'} |"
        )
    if isinstance(fail, str):
        return "\n".join([*lines, "", f"Failover: not measured ({fail}).", ""])
    f = min(fail, key=lambda f: f.answering)
    return "\n".join([*lines, "",
        f"Failover (`failover: {{after: {AFTER}s}}`, `interval: {INTERVAL}s`, 3 SSH test hosts, "
        f"`replicas: 1`), seconds from the cut of its host's link, best of {len(fail)}:", "",
        "| unreachable since | recorded failed | failover apply starts | answering elsewhere "
        "| after + interval + apply |", "|--:|--:|--:|--:|--:|",
        f"| {f.noticed:.0f} | {f.failed:.2f} | {f.applied:.2f} | {f.answering:.2f} "
        f"| {AFTER + INTERVAL + f.answering - f.applied:.2f} |", ""])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    p = h.parser("Time rolling replacement against the instances' start-up, with a prober "
                 "counting the instances answering, and failover after a machine's loss.",
                 f"DELAY {QUICK_DELAY:g}, one run each", "3; quick 1")  # fmt: skip
    p.add_argument("--no-failover", action="store_true", help="skip failover (it needs root)")
    args = p.parse_args(argv)
    repeat, delay = args.repeat or (1 if args.quick else 3), QUICK_DELAY if args.quick else DELAY
    log, facts, version = h.Log(), h.machine_facts(), h.take_snapshot(NAME, args.at)
    log(f"measuring reconciler at {version}")
    rolls: list[list[Roll]] = [[] for _ in CONFIGS]
    fail: list[Failover] | str = "--no-failover" if args.no_failover else h.hosts_problem() or []
    with h.workspace(NAME) as base:
        for round_ in range(repeat):
            for k, (runs, (n, policy)) in enumerate(zip(rolls, CONFIGS, strict=True)):
                runs.append(r := roll_once(n, policy, delay, base / f"{k}-{round_}", log))
                log(f"{n} × {policy}: {r.wall:.2f} s, {r.batches} batches, fewest {r.fewest}")
            if isinstance(fail, list):
                fail.append(failover(base / f"failover-{round_}"))
                log(f"failover: answering elsewhere after {fail[-1].answering:.2f} s")
    text = report(h.command_line("rollout.py", argv), facts, version, log.seconds, rolls, fail,
                  delay, repeat)  # fmt: skip
    h.publish(NAME, text, args.write_results, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
