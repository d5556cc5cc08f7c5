#!/usr/bin/env python3
"""Benchmark `reconciler plan` from empty state against PyYAML's C loader parsing the same
model files (SPEC §8), on generated models repositories of MACHINES × SERVICES.
bench/README.md describes what is measured; `python3 bench/plan.py -h` lists the options."""

from __future__ import annotations

import gc
import io
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import harness as h  # beside this script
import yaml

NAME = "plan"
GNU_TIME = Path("/usr/bin/time")  # `-f %M`: a process's own peak RSS
DEPLOYMENT = "bench"
MODELS = ("machines", "physical", "packages", "services", "distribution")
MODEL_FILES = tuple(f"{n}.yaml" for n in MODELS)
SHARED_LIBS = 5  # lib-0 … lib-4, each depending on the one before
SERVICES_PER_PACKAGE = 40  # 10,000 instances → 250 app packages
DEFAULT_SIZES, QUICK_SIZES, GOAL_SIZE = "100x10,1000x10,2000x10", "20x5,40x5", "1000x10"
GOAL_RATIO, GOAL_RSS_MB, GOAL_DOUBLING = 3.0, 600.0, 2.0 * 1.15


@dataclass(frozen=True)
class Size:
    machines: int
    per_machine: int

    @classmethod
    def parse(cls, text: str) -> Size:
        m = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", text)
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            raise ValueError(f"{text!r}: write a size as MACHINESxSERVICES")
        return cls(int(m.group(1)), int(m.group(2)))

    @property
    def instances(self) -> int:
        return self.machines * self.per_machine

    @property
    def label(self) -> str:
        return f"{self.machines}×{self.per_machine}"

    @property
    def slug(self) -> str:
        return f"{self.machines}x{self.per_machine}"


@dataclass(frozen=True)
class Timing:
    seconds: float  # best wall time
    rss_mb: float  # peak RSS of the process (MB = 2**20 bytes)
    code: int = 0


@dataclass(frozen=True)
class Row:
    env: str
    size: Size
    yaml_bytes: int
    parse_s: float
    parse_nogc_s: float
    json: Timing
    text: Timing
    against: Timing | None = None  # `plan --against HEAD`: the record = the same model

    @property
    def rss_mb(self) -> float:
        return max(self.json.rss_mb, self.text.rss_mb)


def generate(root: Path, size: Size, env: str) -> None:
    """Write and commit a models repository of `size` with machines of targetEnv `env`."""
    mw, sw = max(4, len(str(size.machines - 1))), max(2, len(str(size.per_machine - 1)))
    n_apps = max(1, size.instances // SERVICES_PER_PACKAGE)
    aw = max(3, len(str(n_apps - 1)))
    machines = [f"m{i:0{mw}d}" for i in range(size.machines)]
    apps = [f"app-{j:0{aw}d}" for j in range(n_apps)]
    libs = [f"lib-{k}" for k in range(SHARED_LIBS)]
    files = {
        "reconciler.yaml": f"deployments:\n  {DEPLOYMENT}:\n    models: "
        f"[{', '.join(MODEL_FILES)}]\n    branch: main\n    autoApply: false\n"
    }
    out = ["description: synthetic benchmark model (bench/plan.py)\n", "machines:\n"]
    for i, m in enumerate(machines):
        out.append(
            f"  {m}:\n    properties: {{zone: z{i % 8}, rack: {i % 40}}}\n"
            f"    packages: [{libs[0]}]\n"
        )
    files["machines.yaml"] = "".join(out)
    out = ["machines:\n"]
    for m in machines:
        # Documentation names (RFC 6761 .example): never contacted, plan does no I/O on
        # machines, and unlike 203.0.113.0/24 there are enough for 2,000 machines.
        ssh = f"ssh\n      ssh: {{host: {m}.bench.example, user: deploy}}"
        target = ssh if env == "ssh" else "local"
        out.append(f"  {m}:\n    deployment:\n      targetEnv: {target}\n      maxParallel: 8\n")
    files["physical.yaml"] = "".join(out)
    out = ["packages:\n"]
    for k, lib in enumerate(libs):
        out.append(
            f"  {lib}:\n    src: packages/{lib}\n" + (f"    deps: [{libs[k - 1]}]\n" if k else "")
        )
        files[f"packages/{lib}/lib/{lib}.sh"] = f"# {lib}\nexport LIB_{k}=1\n"
    for j, app in enumerate(apps):
        build = '    build: "cp -r $src/. $out/"\n' if j % 2 else ""
        out.append(
            f"  {app}:\n    src: packages/{app}\n{build}    deps: [{libs[j % SHARED_LIBS]}]\n"
        )
        files[f"packages/{app}/bin/x"] = f"#!/bin/sh\n# {app}\nexec sleep infinity\n"
    files["packages.yaml"] = "".join(out)
    services, distribution = ["services:\n"], ["distribution:\n"]
    for i, m in enumerate(machines):
        for k in range(size.per_machine):
            name = f"{m}-s{k:0{sw}d}"
            app = apps[(i * size.per_machine + k) * n_apps // size.instances]
            depends = f"    dependsOn: [{m}-s{k - 1:0{sw}d}]\n" if k else ""
            services.append(
                f"  {name}:\n    package: {app}\n    type: process\n    command: bin/x\n"
                f"    port: auto\n{depends}    env:\n      LOG_LEVEL: info\n"
                f"      WORKERS: {1 + k % 4}\n    healthCheck: {{http: /health, timeout: 5s}}\n"
            )
            distribution.append(f"  {name}: [{m}]\n")
    files["services.yaml"], files["distribution.yaml"] = "".join(services), "".join(distribution)
    root.mkdir(parents=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        (root / rel).chmod(0o755 if rel.endswith("/bin/x") else 0o644)
    h.git(root, "init", "-q", "-b", "main")
    h.commit(root, f"bench model {size.label} ({env})")


def parse_seconds(paths: Sequence[Path], repeat: int, collect: bool = True) -> float:
    """Best time to parse the files (already in memory) with the C loader; collect=False
    with the garbage collector off (at 10,000 services more than half of yaml.load's time,
    which a loader can avoid)."""
    blobs = [p.read_bytes() for p in paths]
    best, was_enabled = float("inf"), gc.isenabled()
    try:
        for _ in range(repeat):
            gc.collect()
            (gc.enable if collect else gc.disable)()
            start = time.perf_counter()
            for blob in blobs:
                yaml.load(blob, Loader=yaml.CSafeLoader)
            best = min(best, time.perf_counter() - start)
    finally:
        (gc.enable if was_enabled else gc.disable)()
    return best


def run_once(
    cmd: Sequence[str], stdout: int | IO[bytes] = subprocess.DEVNULL, check: bool = True
) -> Timing:
    """Wall time and peak RSS of `cmd`. The RSS comes from GNU time when there is one:
    wait4's ru_maxrss of a direct child also counts the pages it had before exec, i.e.
    this (much larger) process's."""
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss:
        timed = [str(GNU_TIME), "-q", "-f", "%M", "-o", rss.name] if GNU_TIME.is_file() else []
        start = time.perf_counter()
        proc = subprocess.Popen([*timed, *cmd], stdout=stdout, stderr=err, env=h.child_env())
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if check and code != 0:
            err.seek(0)
            why = err.read().decode(errors="replace")[-4000:]
            raise RuntimeError(f"{' '.join(cmd)} exited {code}:\n{why}")
        kib = usage.ru_maxrss  # KiB on Linux
        if GNU_TIME.is_file() and (lines := rss.read().split()) and lines[-1].isdigit():
            kib = int(lines[-1])
    return Timing(seconds, kib / 1024, code)


def best_of(cmd: Sequence[str], repeat: int, check: bool = True, warm_up: bool = False) -> Timing:
    """The best wall time of `repeat` runs, and the highest peak RSS among them."""
    if warm_up:
        run_once(cmd, check=check)
    runs = [run_once(cmd, check=check) for _ in range(repeat)]
    return Timing(min(t.seconds for t in runs), max(t.rss_mb for t in runs), runs[-1].code)


def plan_args(repo: Path, state: Path, fmt: str) -> list[str]:
    return ["--repo", str(repo), "-d", DEPLOYMENT, "--state", str(state), "plan", "--format", fmt]


def measure(cmd: list[str], repo: Path, env: str, size: Size, repeat: int, against: bool) -> Row:
    state = repo.parent / f"state-{size.slug}-{env}" / "missing.db"
    with tempfile.TemporaryFile() as out:  # untimed: a warm-up, and the plan is what we think
        run_once([*cmd, *plan_args(repo, state, "json")], stdout=out)
        out.seek(0)
        summary = json.load(out)["summary"]
    if summary["toActivate"] != size.instances or summary["machinesToAdd"] != size.machines:
        raise RuntimeError(f"unexpected plan for {size.label}: {summary}")
    if state.exists():
        raise RuntimeError(f"plan created the state file {state}")
    files = [repo / "reconciler.yaml", *(repo / f for f in MODEL_FILES)]
    return Row(
        env, size, sum(p.stat().st_size for p in files),
        parse_seconds(files, repeat), parse_seconds(files, repeat, collect=False),
        best_of([*cmd, *plan_args(repo, state, "json")], repeat),
        best_of([*cmd, *plan_args(repo, state, "text")], repeat),
        best_of([*cmd, *plan_args(repo, state, "json"), "--against", "HEAD"], repeat)
        if against else None,
    )  # fmt: skip


def profile(repo: Path, size: Size, top: int) -> tuple[Path, h.Driven]:
    """The plan (json) under cProfile, GC on and off: top functions and GC time to a file."""
    args = plan_args(repo, repo.parent / "state-profile" / "missing.db", "json")
    plain, no_gc = h.drive(args, None), h.drive(args, None, collect=False)  # without the profiler
    buf = io.StringIO()
    buf.write(
        f"reconciler plan --format json, {size.label} ({size.instances:,} instances), empty "
        f"state\n\nWithout profiler:        {plain.describe()}\n"
        f"Without profiler, GC off: {no_gc.wall:.2f} s in main()\n"
    )
    for collect, name in ((True, "plan.prof"), (False, "plan-nogc.prof")):
        run, state = h.drive(args, h.OUT_DIR / name, collect), "on" if collect else "off"
        buf.write(f"\n{'#' * 80}\n# cProfile, garbage collector {state}: {h.OUT_DIR / name}\n# ")
        buf.write(
            f"{run.describe()}\n# A GC pass is charged to whatever function allocated when it "
            "began, so the own time of allocation-heavy functions (load_yaml above all) "
            "includes GC.\n"
            if collect
            else "What the code itself costs, without GC pauses mixed in.\n"
        )
        for key, restrictions, title in (
            ("cumulative", (top,), f"top {top} by cumulative time"),
            ("tottime", (top,), f"top {top} by own time (tottime)"),
            ("cumulative", ("reconciler/", top), f"top {top} of reconciler's own functions"),
        ):
            buf.write(f"\n{'=' * 20} GC {state}: {title} {'=' * 20}\n")
            stats = pstats.Stats(str(h.OUT_DIR / name), stream=buf)
            stats.sort_stats(key).print_stats(*restrictions)
    text = buf.getvalue()
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")} | {str(h.ROOT)}
    for root in sorted(roots, key=len, reverse=True):
        text = text.replace(root.rstrip(os.sep) + os.sep, "")
    target = h.OUT_DIR / "plan-profile.txt"
    target.write_text(text)
    return target, plain


def table(rows: Sequence[Row]) -> list[str]:
    against = any(r.against for r in rows)
    lines = [
        "| env | size | instances | YAML bytes | parse s | plan s (json) | plan s (text) "
        "| ratio json | ratio text | peak RSS MB | parse s, GC off | ratio json vs GC off |"
        + (" plan s (--against HEAD) |" if against else ""),
        "|---|---|" + "--:|" * (10 + against),
    ]
    for r in rows:
        lines.append(
            f"| {r.env} | {r.size.label} | {r.size.instances:,} | {r.yaml_bytes:,} "
            f"| {r.parse_s:.3f} | {r.json.seconds:.2f} | {r.text.seconds:.2f} "
            f"| {r.json.seconds / r.parse_s:.1f}× | {r.text.seconds / r.parse_s:.1f}× "
            f"| {r.rss_mb:.0f} | {r.parse_nogc_s:.3f} | {r.json.seconds / r.parse_nogc_s:.1f}× |"
            + ((f" {r.against.seconds:.2f} |" if r.against else " |") if against else "")
        )
    return lines


def doubling_lines(rows: Sequence[Row]) -> list[str]:
    out = []
    for env in dict.fromkeys(r.env for r in rows):
        mine = [r for r in rows if r.env == env]
        if len(mine) < 2:
            continue
        a, b = mine[-2], mine[-1]
        against = a.against and b.against and b.against.seconds / a.against.seconds
        out.append(
            f"- {env}, {a.size.label} → {b.size.label} ({b.size.instances / a.size.instances:g}× "
            f"the instances): plan json {b.json.seconds / a.json.seconds:.2f}×, text "
            f"{b.text.seconds / a.text.seconds:.2f}×, parse {b.parse_s / a.parse_s:.2f}×, peak "
            f"RSS {b.rss_mb / a.rss_mb:.2f}×"
            + (f", plan --against HEAD {against:.2f}×" if against else "")
        )
    return out


def goal_lines(rows: Sequence[Row], goal: Size) -> list[str]:
    out = []
    for r in (r for r in rows if r.size == goal):
        rj, rt = r.json.seconds / r.parse_s, r.text.seconds / r.parse_s
        out.append(
            f"- {r.env}, {goal.label}: plan within {GOAL_RATIO:g}× parse — "
            f"{h.verdict(max(rj, rt) <= GOAL_RATIO)} (json {rj:.1f}×, text {rt:.1f}×); peak RSS "
            f"under {GOAL_RSS_MB:.0f} MB — {h.verdict(r.rss_mb < GOAL_RSS_MB)} ({r.rss_mb:.0f} MB)"
        )
        for d in (d for d in rows if d.env == r.env and d.size.instances == 2 * r.size.instances):
            worst = max(d.json.seconds / r.json.seconds, d.text.seconds / r.text.seconds)
            out.append(
                f"- {r.env}, {goal.label} → {d.size.label}: time at most {GOAL_DOUBLING:.2f}× — "
                f"{h.verdict(worst <= GOAL_DOUBLING)} ({worst:.2f}×)"
            )
    return out


def report(
    b: h.Bench, rows: Sequence[Row], overhead: tuple[Timing, Timing],
    profiled: tuple[Path, h.Driven, str] | None,
) -> list[str]:  # fmt: skip
    startup, ver = overhead
    body = [
        *b.header(f"{h.best_of(b.args.repeat)} per timing"),
        *table(rows),
        "",
        f"Fixed overhead: `python -c pass` {startup.seconds:.3f} s ({startup.rss_mb:.0f} MB); "
        f"`reconciler --version` {ver.seconds:.3f} s ({ver.rss_mb:.0f} MB, exit status "
        f"{ver.code}).",
        "",
    ]
    for title, part in (("Doubling (last two sizes)", doubling_lines(rows)),
                        ("Goals", goal_lines(rows, Size.parse(GOAL_SIZE)))):  # fmt: skip
        body += [f"{title}:", "", *part, ""] if part else []
    if profiled:
        path, run, what = profiled
        body.append(
            f"Profile ({what}): `{path.relative_to(h.ROOT)}` (git-ignored). Garbage collector "
            f"in that plan: {run.describe()}."
        )
    return body


def main(argv: Sequence[str] | None = None) -> int:
    b = h.Bench(NAME, __doc__, f"small sizes ({QUICK_SIZES}), 1 run")
    add = b.options.add_argument
    add("--sizes", help=f"comma-separated MACHINESxSERVICES ({DEFAULT_SIZES})")
    add("--envs", default="ssh,local", help="machine targetEnvs: ssh, local (both)")
    add("--against", action="store_true", help="also time `plan --against HEAD`")
    add("--no-profile", action="store_true", help="skip the cProfile run")
    add("--out", type=Path, help="generate the repositories here and keep them")
    if not getattr(yaml, "__with_libyaml__", False):
        raise SystemExit("PyYAML is built without libyaml: no CSafeLoader to compare with")
    import pydantic

    args = b.start(argv, f"PyYAML {yaml.__version__} (libyaml: {yaml.__with_libyaml__})",
                   f"pydantic {pydantic.VERSION}", h.first_line(["git", "--version"]))  # fmt: skip
    spec, repeat = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES), args.repeat
    try:
        sizes = sorted({Size.parse(s) for s in spec.split(",")}, key=lambda s: s.instances)
    except ValueError as e:
        b.options.error(str(e))
    envs = [e.strip() for e in args.envs.split(",") if e.strip()]
    if not sizes or not envs or set(envs) - {"ssh", "local"}:
        b.options.error("give sizes and --envs of ssh and/or local")
    cmd = h.reconciler_cmd()
    with h.workspace(NAME, args.out) as base:
        startup = best_of([sys.executable, "-c", "pass"], max(repeat, 5), warm_up=True)
        # `reconciler --version` may exit non-zero; its cost is still the start-up.
        ver = best_of([*cmd, "--version"], max(repeat, 5), check=False, warm_up=True)
        rows: list[Row] = []
        for env in envs:
            for size in sizes:
                repo = base / f"{size.slug}-{env}" / "models"
                shutil.rmtree(repo.parent, ignore_errors=True)
                generate(repo, size, env)
                rows.append(row := measure(cmd, repo, env, size, repeat, args.against))
                b.log(f"{env} {size.label}: plan json {row.json.seconds:.2f} s")
        profiled = None
        if not args.no_profile:
            goal = Size.parse(GOAL_SIZE)
            size = goal if goal in sizes else sizes[-1]
            repo = base / f"{size.slug}-{envs[0]}" / "models"
            if not repo.exists():
                generate(repo, size, envs[0])
            path, run = profile(repo, size, 25)
            profiled = (path, run, f"{envs[0]}, {size.label}, json")
    return b.publish(report(b, rows, (startup, ver), profiled))


if __name__ == "__main__":
    sys.exit(main())
