#!/usr/bin/env python3
"""Benchmark the transition of `reconciler apply` (SPEC §3 step 5): does activating 3 layers
of 10 services, each dependsOn the layer before, follow its critical path? Goal (issue 4):
activation window ≤ 1.3 × the critical path. bench/README.md describes what is measured."""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import harness as h  # beside this script

NAME = "activation"
DEPLOYMENT = "act"
LAYERS, PER_LAYER = 3, 10
DELAY, QUICK_DELAY = 0.2, 0.05
FIRST_PORT = 9100
ADDRESSES = {"parallel": ["127.0.77.11", "127.0.77.12", "127.0.77.13"], "serial": ["127.0.77.21"]}
GOAL_RATIO = 1.3


@dataclass(frozen=True)
class Config:
    layout: str  # "parallel" or "serial"
    delay: float

    @property
    def label(self) -> str:
        return f"{self.layout}, {h.ms(self.delay)} ms"

    @property
    def addresses(self) -> list[str]:
        return ADDRESSES[self.layout]

    @property
    def max_parallel(self) -> int:
        """A layer at once, or one service at a time."""
        return PER_LAYER if self.layout == "parallel" else 1

    @property
    def critical_path(self) -> float:
        """What the graph allows: one DELAY per layer, or one per service one at a time."""
        return self.delay * LAYERS * PER_LAYER / self.max_parallel


def generate(repo: Path, config: Config) -> None:
    """A committed models repository: one package (the program), 30 services, the machines."""
    env, services = {"DELAY": f"{config.delay:g}"}, {}
    for layer in range(LAYERS):
        after = {"dependsOn": [f"s{layer - 1}-{d}" for d in range(PER_LAYER)]} if layer else {}
        for i in range(PER_LAYER):
            port = FIRST_PORT + layer * PER_LAYER + i
            services[f"s{layer}-{i}"] = h.service(port, env=env, **after)
    n, where = len(config.addresses), {"targetEnv": "local", "maxParallel": config.max_parallel}
    machines = {
        f"m{j + 1}": {"deployment": {**where, "address": a}} for j, a in enumerate(config.addresses)
    }
    models = {
        "description": f"bench/activation.py: {config.label}",
        "machines": machines,
        "packages": {"svc": {"src": "packages/svc"}},
        "services": services,
        "distribution": {name: [f"m{int(name.split('-')[1]) % n + 1}"] for name in services},
    }
    h.new_repo(repo, service=True)
    h.commit_models(repo, config.label, {"models.yaml": models}, {DEPLOYMENT: ["models.yaml"]})


@dataclass
class Instance:
    layer: int
    forked: float
    start: float
    ready: float
    end: float  # the journal's `at` of its activate step


@dataclass
class Run:
    config: Config
    t0: float  # before the apply process was started
    t1: float  # after it exited
    started: float  # the attempt's started_at
    profiles_done: float  # end of the last switch-profile
    instances: list[Instance]
    destroy_wall: float = float("nan")
    cpu: float = 0.0  # CPU s of the apply process and what it waited for (sh, agents, git)
    busy: float = 0.0  # share of all cores busy during the apply (every process)

    @property
    def wall(self) -> float:
        return self.t1 - self.t0

    @property
    def window(self) -> float:
        return max(i.end for i in self.instances) - self.profiles_done

    def layer(self, k: int) -> list[Instance]:
        return [i for i in self.instances if i.layer == k]

    @property
    def measured_critical(self) -> float:
        """The critical path as the programs took it (fork → listen): per layer the slowest
        (parallel), or the sum over all (serial)."""
        if self.config.layout == "serial":
            return sum(i.ready - i.forked for i in self.instances)
        return sum(max(i.ready - i.forked for i in self.layer(k)) for k in range(LAYERS))

    def phases(self) -> list[tuple[str, float]]:
        return [
            ("start-up, models, plan", self.started - self.t0),
            ("build, transfer, lock, switch profiles", self.profiles_done - self.started),
            ("activation window", self.window),
            ("record, unlock, exit", self.t1 - self.profiles_done - self.window),
        ]


def run_once(config: Config, repo: Path, work: Path, keep_path: bool, log: h.Log) -> Run:
    """A fresh deployment: apply; the attempt and its journal from the state DB, the programs'
    times from their logs; destroy; nothing left running."""
    state, env = work / "state.db", h.child_env(standard_path=not keep_path)
    base = h.reconciler_cmd(repo, state, DEPLOYMENT)
    try:
        ran = h.run([*base, "apply", "--yes", "--format", "json"], env, timeout=300)
        attempt = h.last_attempt(state, DEPLOYMENT)
        if attempt is None or attempt.status != "succeeded":
            raise RuntimeError(f"attempt: {attempt and attempt.status}")
        instances = []
        for step in (s for s in attempt.transition if s.action == "activate"):
            name = step.detail["instance"].split("@", 1)[0]
            got = h.bench_times(state, step.target, DEPLOYMENT, name)
            layer = int(name[1 : name.index("-")])
            instances.append(Instance(layer, got["forked"], got["start"], got["ready"], step.at))
        if len(instances) != LAYERS * PER_LAYER:
            raise RuntimeError(f"{len(instances)} activations journaled, not {LAYERS * PER_LAYER}")
        profiled = max(attempt.ends("switch-profile"))
        result = Run(config, ran.t0, ran.t0 + ran.wall, attempt.started, profiled, instances)
        result.cpu, result.busy = ran.cpu, ran.busy
        gone = h.run([*base, "destroy", "--yes"], env, check=False, timeout=300)
        result.destroy_wall = gone.wall
        if gone.code != 0:
            log(f"destroy ({config.label}) exited {gone.code}: {gone.stderr[-1000:]}")
        return result
    finally:
        h.kill_leftovers(work)


def run_floor(config: Config, work: Path) -> float:
    """What this machine allows: the same programs started by a plain in-process spawner
    (Popen, then a TCP connect every 5 ms until each listens; a layer after the one before;
    serial: one at a time), no agent, no journal. Wall time; all killed after."""
    program = work / "svc"
    h.write_program(program, h.SERVICE)
    procs: list[subprocess.Popen[bytes]] = []

    def start(layer: int, i: int) -> tuple[str, int]:
        address = config.addresses[i % len(config.addresses)]
        port = FIRST_PORT + layer * PER_LAYER + i
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOST": address, "PORT": str(port),
               "DELAY": f"{config.delay:g}"}  # fmt: skip
        procs.append(subprocess.Popen([str(program)], env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))  # fmt: skip
        return address, port

    try:
        t0, step = time.perf_counter(), config.max_parallel  # a layer at once, or one at a time
        for layer, first in ((k, i) for k in range(LAYERS) for i in range(0, PER_LAYER, step)):
            for a, p in [start(layer, i) for i in range(first, first + step)]:
                h.wait_for(f"{a}:{p} listening", functools.partial(h.listening, a, p), 10, 0.005)
        return time.perf_counter() - t0
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def calibrate(keep_path: bool) -> tuple[float, float | None]:
    """Best of 10, as `sh -c` runs them for a `local` machine: `python3 -c pass` and the
    agent with an unknown command (its imports, then exit)."""
    env = h.child_env(standard_path=not keep_path)

    def once(command: str) -> float:
        t0 = time.perf_counter()
        subprocess.run(
            ["sh", "-c", command], env=env, stdin=subprocess.DEVNULL, capture_output=True
        )
        return time.perf_counter() - t0

    def best(command: str) -> float:
        return min(once(command) for _ in range(10))

    agent = h.agent_script()
    bare = best("python3 -c pass")
    return bare, best(f"python3 {shlex.quote(str(agent))} no-such-command") if agent else None


@dataclass
class Result:
    config: Config
    runs: list[Run] = field(default_factory=list)
    floors: list[float] = field(default_factory=list)  # run_floor's wall times

    @property
    def floor(self) -> float:
        return min(self.floors)

    @property
    def best(self) -> Run:
        return min(self.runs, key=lambda r: r.window)

    @property
    def worst(self) -> Run:
        return max(self.runs, key=lambda r: r.window)

    @property
    def best_wall(self) -> float:
        return min(r.wall for r in self.runs)


def main_table(results: Sequence[Result]) -> list[str]:
    lines = [
        "| configuration | machines × maxParallel | critical path s | measured critical s "
        "| in-process spawner s | activation window s | slowest run s | window / critical path "
        "| window / spawner | apply wall s | apply wall / critical path | CPU s: apply + agents "
        "| cores busy | destroy s |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for res in results:
        c, b, ideal = res.config, res.best, res.config.critical_path
        lines.append(
            f"| {c.label} | {len(c.addresses)} × {c.max_parallel} | {ideal:.2f} "
            f"| {b.measured_critical:.2f} | {res.floor:.3f} | {b.window:.3f} "
            f"| {res.worst.window:.3f} | {f'{b.window / ideal:.2f}×' if ideal else '–'} "
            f"| {b.window / res.floor:.2f}× | {res.best_wall:.2f} "
            f"| {f'{res.best_wall / ideal:.2f}×' if ideal else '–'} | {b.cpu:.2f} "
            f"| {b.busy:.0%} | {b.destroy_wall:.2f} |"
        )
    return lines


def layer_table(run: Run) -> list[str]:
    """Per layer, ms after the layer could begin (the previous layer's last activate end, or
    the last switch-profile for the first layer)."""
    lines = [
        "| layer | first fork | last fork | mean fork → script | mean script → listen "
        "| mean listen → activate end | last listen | last activate end = layer ms "
        "| over delay ms |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    begin = run.profiles_done
    for k in range(LAYERS):
        insts, end = run.layer(k), max(i.end for i in run.layer(k))
        lines.append(
            f"| {k + 1} | {h.ms(min(i.forked for i in insts) - begin)} "
            f"| {h.ms(max(i.forked for i in insts) - begin)} "
            f"| {h.ms(statistics.mean(i.start - i.forked for i in insts))} "
            f"| {h.ms(statistics.mean(i.ready - i.start for i in insts))} "
            f"| {h.ms(statistics.mean(i.end - i.ready for i in insts))} "
            f"| {h.ms(max(i.ready for i in insts) - begin)} | {h.ms(end - begin)} "
            f"| {h.ms(end - begin - run.config.delay)} |"
        )
        begin = end
    return lines


def overhead_lines(by: dict[tuple[str, float], Result], delay: float) -> list[str]:
    """Whose the time over the critical path is, and what one activation costs."""
    out, ms = [], h.ms
    if par := by.get(("parallel", delay)):
        over = (par.best.window - par.best.config.critical_path) / LAYERS
        machine = (par.floor - par.best.config.critical_path) / LAYERS
        out.append(
            f"- Parallel, {ms(delay)} ms: {ms(over)} ms per layer over the delay, {ms(machine)} ms "
            "of it this machine's (the in-process spawner's time over the critical path: 10 "
            f"interpreters starting at once on {h.nproc()} cores), {ms(over - machine)} ms "
            "reconciler's (the agent's threads, the journal, 20 ms between health probes)."
        )
    for layout, d in (("parallel", 0.0), ("serial", delay), ("serial", 0.0)):
        if res := by.get((layout, d)):
            n = LAYERS if layout == "parallel" else LAYERS * PER_LAYER
            what = "layer of 10 concurrent activations" if n == LAYERS else "activation"
            out.append(
                f"- {res.config.label}: window {ms(res.best.window)} ms = "
                f"{ms(res.best.window / n)} ms per {what}."
            )
    return out


def goal_lines(results: Sequence[Result]) -> list[str]:
    out = []
    for res in (r for r in results if r.config.layout == "parallel" and r.config.delay):
        c, b = res.config, res.best
        ratio = b.window / c.critical_path
        out.append(
            f"- {c.label}: activation window ≤ {GOAL_RATIO:g} × critical path "
            f"({h.ms(c.critical_path)} ms) — {h.verdict(ratio <= GOAL_RATIO)} ({ratio:.2f}× best, "
            f"{res.worst.window / c.critical_path:.2f}× slowest run; against the critical path "
            f"the programs actually took, {h.ms(b.measured_critical)} ms: "
            f"{b.window / b.measured_critical:.2f}×; against the in-process spawner, "
            f"{h.ms(res.floor)} ms: {b.window / res.floor:.2f}×; the whole apply "
            f"{res.best_wall / c.critical_path:.2f}×)"
        )
        for other in (o for o in results if o.config == Config("serial", c.delay)):
            out.append(
                f"- {c.label} vs serial: {other.best.window / b.window:.1f}× faster (window), "
                f"{other.best_wall / res.best_wall:.1f}× (apply)"
            )
    return out


def report(
    b: h.Bench, results: Sequence[Result], calibration: tuple[float, float | None]
) -> list[str]:
    delay = max(r.config.delay for r in results)
    by = {(r.config.layout, r.config.delay): r for r in results}
    path = "the caller's PATH" if b.args.keep_path else f"PATH={h.STANDARD_PATH} (sshd's default)"
    runs = f"{h.best_of(b.args.repeat)} per configuration (configurations in rounds)"
    lines = [*b.header(f"{runs}; reconciler ran with {path}"), *main_table(results), ""]
    if par := by.get(("parallel", delay)):
        run = par.best
        lines += [
            f"Per layer, best parallel {h.ms(delay)} ms run (ms after the layer could begin: "
            "the previous layer's last activate end, for layer 1 the last switch-profile end):",
            "",
            *layer_table(run),
            "",
            "Phases of that apply (wall clock; the attempt's `started_at`, journal `at`): "
            + "; ".join(f"{name} {h.ms(s)} ms" for name, s in run.phases())
            + f" — {h.ms(run.wall)} ms in all.",
            "",
        ]
    bare, agent = calibration
    lines += [
        "Where the time goes:",
        "",
        f"- Calibration (best of 10, `sh -c` as a `local` machine runs it): `python3 -c pass` "
        f"{h.ms(bare)} ms; the agent with an unknown command (its imports, then exit) "
        + (f"{h.ms(agent)} ms." if agent is not None else "not measured (no agent script)."),
        *overhead_lines(by, delay),
        "",
        "### Goals",
        "",
        *goal_lines(results),
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    b = h.Bench(NAME, __doc__, f"DELAY {QUICK_DELAY:g} only, one run each")
    b.options.add_argument("--only", default="parallel,serial", help="layouts (both)")
    b.options.add_argument("--no-zero", action="store_true", help="skip DELAY 0 (as --quick)")
    b.options.add_argument("--keep-path", action="store_true", help="reconciler gets your PATH")
    args = b.start(argv)
    python = shutil.which("python3", path=None if args.keep_path else h.STANDARD_PATH)
    b.note(f"`python3` for agents and services: {python or 'not found'}")
    layouts = [x.strip() for x in args.only.split(",") if x.strip()]
    if not layouts or set(layouts) - {"parallel", "serial"}:
        b.options.error("--only takes parallel and/or serial")
    delays = [QUICK_DELAY] if args.quick else [DELAY] if args.no_zero else [DELAY, 0.0]
    configs = [Config(layout, d) for d in delays for layout in layouts]
    calibration = calibrate(args.keep_path)
    results = {c: Result(c) for c in configs}
    with h.workspace(NAME) as base:
        repos = {c: base / f"{c.layout}-{h.ms(c.delay)}ms" / "models" for c in configs}
        for c, repo in repos.items():
            generate(repo, c)
        for round_ in range(args.repeat):
            for c in configs:
                work = repos[c].parent / f"run{round_}"
                run = run_once(c, repos[c], work, args.keep_path, b.log)
                results[c].runs.append(run)
                results[c].floors.append(run_floor(c, work / "floor"))
                b.log(f"{c.label}: apply {run.wall:.2f} s, activation window {run.window:.3f} s")
                shutil.rmtree(work, ignore_errors=True)
    return b.publish(report(b, list(results.values()), calibration))


if __name__ == "__main__":
    sys.exit(main())
