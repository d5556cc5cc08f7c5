#!/usr/bin/env python3
"""Benchmark rolling replacement and failover (SPEC §9, §10; issue 12): a 3- and a 10-instance
service upgraded with maxUnavailable 1 and 25 % — wall time against the instances' start-up
times, and the fewest answering at once (the guarantee) — and the time from a machine's loss
to its policy-placed instance answering elsewhere. bench/README.md describes what is measured."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
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


def answers(url: str) -> bool:
    return h.answer(url) is not None


def get(url: str) -> Any:
    return json.loads(h.http(url)[1])


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


def commit(
    repo: Path, message: str, machines: dict[str, Any], placed: Any, **settings: Any
) -> None:
    """Models of the service `web` on `machines`, committed (`settings`: web's own, then the
    deployment's)."""
    web = h.service(PORT, "/", **settings.pop("web", {}))
    models = {"machines": machines, "packages": {"svc": {"src": "packages/svc"}},
              "services": {"web": web}, "distribution": {"web": placed}}  # fmt: skip
    h.commit_models(repo, message, {"m.yaml": models}, {DEPLOYMENT: ["m.yaml"]}, **settings)


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


def roll_once(n: int, policy: int | str, delay: float, work: Path) -> Roll:
    """n `local` machines (127.0.78.1…), one instance on each: deploy version 1, time the
    upgrade to version 2 under the prober, destroy."""
    repo, state = h.new_repo(work / "models", service=True), work / "state.db"
    base, env = h.reconciler_cmd(repo, state, DEPLOYMENT), h.child_env(standard_path=True)
    machines = {f"m{i:02d}": {"deployment": {"targetEnv": "local", "address": f"127.0.78.{i}"}}
                for i in range(1, n + 1)}  # fmt: skip
    try:
        for version in (1, 2):
            web = {"env": {"DELAY": f"{delay:g}", "VERSION": str(version)},
                   "rollout": {"maxUnavailable": policy}}  # fmt: skip
            commit(repo, f"version {version}", machines, sorted(machines), web=web)
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
        window = max(attempt.ends("rollout-batch")) - max(attempt.ends("switch-profile"))
        startup = sum(max(started(state, key) for key in batch) for batch in batches)
        h.run([*base, "destroy", "--yes"], env, timeout=300)
        return Roll(n, policy, len(batches[0]), len(batches), ran.wall, window, startup,
                    prober.fewest)  # fmt: skip
    finally:
        h.kill_leftovers(work)


def started(state: Path, key: str) -> float:
    """The instance's last start-up, fork → listening, from its log."""
    got = h.bench_times(state, key.split("@")[1], DEPLOYMENT, "web")
    return got["ready"] - got["forked"]


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
        repo, state = h.new_repo(work / "models", service=True), work / "state.db"
        port = h.free_port()
        commit(repo, "failover", {m: h.ssh_machine(x) for m, x in hosts.items()}, {"replicas": 1},
               interval=f"{INTERVAL}s", failover={"after": f"{AFTER}s"})  # fmt: skip
        api = f"http://127.0.0.1:{port}/api/deployments/{DEPLOYMENT}"
        cmd = [*h.reconciler_cmd(repo, state), "run", "--listen", f"127.0.0.1:{port}"]
        with h.background(cmd, h.child_env(), work / "controller.log"):
            first = h.wait_for("the first generation", lambda: active_on(api), 120, 0.2)
            others = [f"http://{x.address}:{PORT}/" for m, x in hosts.items() if m != first]
            net.cut(hosts[first])
            cut = time.time()
            h.wait_for("an answer elsewhere", lambda: any(map(answers, others)), 120)
            answering = time.time() - cut
            failed = h.wait_for("failed", lambda: machine(api, first).get("failedSince"), 60, 0.2)
            attempt, why = h.last_attempt(state, DEPLOYMENT), get(f"{api}/history")[0]["reason"]
            assert attempt is not None and why.startswith(f"failover: {first} "), why
            noticed = h.stamp(why.split(" since ")[1]) - cut
            return Failover(noticed, h.stamp(failed) - cut, attempt.started - cut, answering)


def machine(api: str, name: str) -> dict[str, Any]:
    return next(m for m in get(api)["machines"] if m["name"] == name)


def active_on(api: str) -> str | None:
    """The one machine where web is active (None while the API does not answer yet)."""
    try:
        on = [i["machine"] for i in get(api).get("instances", []) if i["state"] == "active"]
    except (OSError, ValueError):
        return None
    return on[0] if len(on) == 1 else None


def report(
    b: h.Bench, rolls: list[list[Roll]], fail: list[Failover] | str, delay: float
) -> list[str]:
    summary = f"{h.best_of(b.args.repeat)} per configuration (fewest answering: of all runs)"
    lines = [*b.header(f"{summary}, start-up DELAY {h.ms(delay)} ms"),
             "| instances | maxUnavailable | batches | apply s | rollout window s | Σ start-up s "
             "| overhead ms per batch | fewest answering | guarantee |",
             "|---|---|--:|--:|--:|--:|--:|--:|---|"]  # fmt: skip
    for runs in rolls:
        r, fewest = min(runs, key=lambda r: r.wall), min(r.fewest for r in runs)
        lines.append(
            f"| {r.n} | {r.policy} | {r.batches} | {r.wall:.2f} | {r.window:.2f} "
            f"| {r.startup:.2f} | {h.ms((r.window - r.startup) / r.batches)} | {fewest} "
            f"| ≥ {r.n - r.size}: {'kept' if fewest >= r.n - r.size else '**broken**'} |"
        )
    if isinstance(fail, str):
        return [*lines, "", f"Failover: not measured ({fail})."]
    f = min(fail, key=lambda f: f.answering)
    return [*lines, "",
        f"Failover (`failover: {{after: {AFTER}s}}`, `interval: {INTERVAL}s`, 3 SSH test hosts, "
        f"`replicas: 1`), seconds from the cut of its host's link, best of {len(fail)}:", "",
        "| unreachable since | recorded failed | failover apply starts | answering elsewhere "
        "| after + interval + apply |", "|--:|--:|--:|--:|--:|",
        f"| {f.noticed:.0f} | {f.failed:.2f} | {f.applied:.2f} | {f.answering:.2f} "
        f"| {AFTER + INTERVAL + f.answering - f.applied:.2f} |"]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    b = h.Bench(NAME, __doc__, f"DELAY {QUICK_DELAY:g}, one run each")
    b.options.add_argument("--no-failover", action="store_true", help="skip failover (root)")
    args = b.start(argv)
    delay = QUICK_DELAY if args.quick else DELAY
    rolls: list[list[Roll]] = [[] for _ in CONFIGS]
    fail: list[Failover] | str = "--no-failover" if args.no_failover else h.hosts_problem() or []
    with h.workspace(NAME) as base:
        for round_ in range(args.repeat):
            for k, (runs, (n, policy)) in enumerate(zip(rolls, CONFIGS, strict=True)):
                runs.append(r := roll_once(n, policy, delay, base / f"{k}-{round_}"))
                b.log(f"{n} × {policy}: {r.wall:.2f} s, {r.batches} batches, fewest {r.fewest}")
            if isinstance(fail, list):
                fail.append(failover(base / f"failover-{round_}"))
                b.log(f"failover: answering elsewhere after {fail[-1].answering:.2f} s")
    return b.publish(report(b, rolls, fail, delay))


if __name__ == "__main__":
    sys.exit(main())
