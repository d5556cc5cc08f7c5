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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness as h  # beside this script

NAME = "rollout"
DEPLOYMENT = "roll"
CONFIGS = [(3, "1"), (3, "25%"), (10, "1"), (10, "25%")]  # instances, maxUnavailable
DELAY, QUICK_DELAY = 0.2, 0.05  # the program's start-up before it listens
PORT, PERIOD = 9200, 0.05  # the prober asks every instance every PERIOD s
AFTER, INTERVAL = 2, 1  # failover: {after: 2s}, interval: 1s


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


class Prober(threading.Thread):
    """Asks every instance at once every PERIOD s until stopped: the fewest that answered."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls, self.fewest, self.rounds = urls, len(urls), 0
        self.stop = threading.Event()

    def run(self) -> None:
        with ThreadPoolExecutor(len(self.urls)) as pool:
            while not self.stop.is_set():
                began = time.monotonic()
                up = sum(pool.map(answers, self.urls))
                self.fewest, self.rounds = min(self.fewest, up), self.rounds + 1
                self.stop.wait(max(0.0, PERIOD - (time.monotonic() - began)))


def batch_size(n: int, policy: str) -> int:
    return max(1, -(-n * int(policy[:-1]) // 100)) if policy.endswith("%") else int(policy)


def write(repo: Path, n: int, policy: str, delay: float, version: int) -> None:
    """n `local` machines (127.0.78.1…), one service on each, at `version`, committed."""
    web = {
        "package": "svc", "command": "bin/svc", "port": PORT,
        "env": {"DELAY": f"{delay:g}", "VERSION": str(version)},
        "healthCheck": {"http": "/", "timeout": "10s"},
        "rollout": {"maxUnavailable": policy if policy.endswith("%") else int(policy)},
    }  # fmt: skip
    machines = {f"m{i:02d}": {"deployment": {"targetEnv": "local", "address": f"127.0.78.{i}"}}
                for i in range(1, n + 1)}  # fmt: skip
    models = {"machines": machines, "packages": {"svc": {"src": "packages/svc"}},
              "services": {"web": web}, "distribution": {"web": sorted(machines)}}  # fmt: skip
    h.write_models(repo, {"models.yaml": models}, {DEPLOYMENT: ["models.yaml"]})
    h.commit(repo, f"version {version}")


@dataclass
class Roll:
    n: int
    policy: str
    wall: float  # the upgrade's apply
    window: float  # last switch-profile end → last batch end
    startup: float  # per batch the slowest fork → listening, summed
    batches: int
    fewest: int  # the fewest instances answering in one round of the prober


def roll_once(n: int, policy: str, delay: float, work: Path, log: h.Log) -> Roll:
    """Deploy version 1, then time the upgrade to version 2 under the prober; destroy."""
    repo, state = h.new_repo(work / "models"), work / "state.db"
    h.write_program(repo / "packages" / "svc" / "bin" / "svc", h.SERVICE)
    base = [*h.reconciler_cmd(), "--repo", str(repo), "--state", str(state), "-d", DEPLOYMENT]
    env = h.child_env(standard_path=True)
    try:
        write(repo, n, policy, delay, 1)
        h.run([*base, "apply", "--yes"], env, timeout=300)
        write(repo, n, policy, delay, 2)
        prober = Prober([f"http://127.0.78.{i}:{PORT}/" for i in range(1, n + 1)])
        prober.start()
        try:
            ran = h.run([*base, "apply", "--yes"], env, timeout=300)
        finally:
            prober.stop.set()
            prober.join()
        attempt = h.last_attempt(state, DEPLOYMENT)
        assert attempt is not None and attempt.status == "succeeded", attempt
        steps = attempt.transition
        batches = [s for s in steps if s.action == "rollout-batch"]
        start = max(s.at for s in steps if s.action == "switch-profile")
        startup = sum(max(started(state, m) for m in b.detail["instances"]) for b in batches)
        h.run([*base, "destroy", "--yes"], env, timeout=300)
        return Roll(n, policy, ran.wall, batches[-1].at - start, startup, len(batches),
                    prober.fewest)  # fmt: skip
    finally:
        if killed := h.kill_leftovers(work):
            log(f"killed {len(killed)} leftover processes")


def started(state: Path, key: str) -> float:
    """The instance's last start-up, fork → listening, from its log."""
    machine = key.split("@")[1]
    folder = state.parent / "machines" / machine / "deployments" / DEPLOYMENT / "instances"
    lines = (folder / "web" / "log").read_text(errors="replace").splitlines()
    got = [json.loads(x)["bench"] for x in lines if x.startswith('{"bench"')][-1]
    return float(got["ready"] - got["forked"])


@dataclass
class Failover:
    noticed: float  # from the cut to `unreachable since` (history's reason; whole seconds)
    failed: float  # … to the machine recorded failed
    applied: float  # … to the failover attempt's start
    answering: float  # … to the instance answering on another host


def failover(work: Path, log: h.Log) -> Failover:
    """A controller, 3 test hosts, one instance placed by policy: cut its host's link."""
    with h.host_network(3, work / "net") as net:
        hosts = {f"m{i + 1}": host for i, host in enumerate(net.hosts)}
        repo, state, port = h.new_repo(work / "models"), work / "state.db", h.free_port()
        h.write_program(repo / "packages" / "svc" / "bin" / "svc", h.SERVICE)
        machines = {m: {"deployment": {"targetEnv": "ssh", "ssh": {
            "host": x.address, "identityFile": str(x.identity_file), "hostKey": x.host_key}}}
            for m, x in hosts.items()}  # fmt: skip
        web = {"package": "svc", "command": "bin/svc", "port": PORT,
               "healthCheck": {"http": "/", "timeout": "10s"}}  # fmt: skip
        models = {"machines": machines, "packages": {"svc": {"src": "packages/svc"}},
                  "services": {"web": web}, "distribution": {"web": {"replicas": 1}}}  # fmt: skip
        h.write_models(repo, {"models.yaml": models}, {})
        (repo / "reconciler.yaml").write_text(
            f"deployments:\n  {DEPLOYMENT}:\n    models: [models.yaml]\n"
            f"    interval: {INTERVAL}s\n    failover: {{after: {AFTER}s}}\n"
        )
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


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


def machine(api: str, name: str) -> dict[str, Any]:
    return next(m for m in get(api)["machines"] if m["name"] == name)


def active_on(api: str) -> str | None:
    """The one machine where web is active."""
    try:
        found = [i["machine"] for i in get(api).get("instances", []) if i["state"] == "active"]
    except OSError:
        return None
    return found[0] if len(found) == 1 else None


def wait(probe: Any, timeout: float, what: str, every: float = 0.2) -> Any:
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
    lines = [
        *h.header(NAME, facts, version, command, summary),
        "| instances | maxUnavailable | batches | apply s | rollout window s | Σ start-up s "
        "| overhead ms per batch | fewest answering | guarantee |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for runs in rolls:
        b = min(runs, key=lambda r: r.wall)
        fewest, floor = min(r.fewest for r in runs), b.n - batch_size(b.n, b.policy)
        lines.append(
            f"| {b.n} | {b.policy} | {b.batches} | {b.wall:.2f} | {b.window:.2f} "
            f"| {b.startup:.2f} | {h.ms((b.window - b.startup) / b.batches)} | {fewest} "
            f"| ≥ {floor}: {'kept' if fewest >= floor else '**broken**'} |"
        )
    lines.append("")
    if isinstance(fail, str):
        return "\n".join([*lines, f"Failover: not measured ({fail}).", ""])
    best = min(fail, key=lambda f: f.answering)
    return "\n".join([*lines,
        f"Failover (`failover: {{after: {AFTER}s}}`, `interval: {INTERVAL}s`, 3 SSH test hosts, "
        f"`replicas: 1`), seconds from the cut of its host's link, best of {len(fail)}:", "",
        "| unreachable since | recorded failed | failover apply starts | answering elsewhere "
        "| after + interval + apply |", "|--:|--:|--:|--:|--:|",
        f"| {best.noticed:.0f} | {best.failed:.2f} | {best.applied:.2f} | {best.answering:.2f} "
        f"| {AFTER + INTERVAL + best.answering - best.applied:.2f} |", ""])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    p = h.parser("Time rolling replacement against the instances' start-up, with a prober "
                 "counting the instances answering, and failover after a machine's loss.",
                 f"DELAY {QUICK_DELAY:g}, one run each", "3; quick 1")  # fmt: skip
    p.add_argument("--no-failover", action="store_true", help="skip failover (it needs root)")
    args = p.parse_args(argv)
    repeat, delay = args.repeat or (1 if args.quick else 3), QUICK_DELAY if args.quick else DELAY
    log = h.Log()
    facts, version = h.machine_facts(), h.take_snapshot(NAME, args.at)
    log(f"measuring reconciler at {version}")
    rolls: list[list[Roll]] = [[] for _ in CONFIGS]
    fail: list[Failover] | str = "--no-failover" if args.no_failover else h.hosts_problem() or []
    with h.workspace(NAME) as base:
        for round_ in range(repeat):
            for runs, (n, policy) in zip(rolls, CONFIGS, strict=True):
                runs.append(roll_once(n, policy, delay, base / f"{n}-{policy}-{round_}", log))
                r = runs[-1]
                log(f"{n} × {policy}: {r.wall:.2f} s, {r.batches} batches, fewest {r.fewest}")
            if isinstance(fail, list):
                fail.append(failover(base / f"failover-{round_}", log))
                log(f"failover: answering elsewhere after {fail[-1].answering:.2f} s")
    text = report(h.command_line("rollout.py", argv), facts, version, log.seconds, rolls, fail,
                  delay, repeat)  # fmt: skip
    h.publish(NAME, text, args.write_results, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
