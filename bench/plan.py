#!/usr/bin/env python3
"""Benchmark `reconciler plan` against parsing the same YAML with PyYAML's C loader.

SPEC §8 sets the budget: at 10,000 instances a plan from empty state takes at most 3×
the time `yaml.load(..., Loader=yaml.CSafeLoader)` takes to parse the same model files,
and (issue) stays under 600 MB peak RSS; doubling the model at most doubles the time
(+15%).

For each size (machines × services per machine) this generates a models repository — a
real, committed Git repository — with services in dependency chains (service k on a
machine depends on service k-1 on the same machine), then measures in one run:

- the PyYAML C-loader parse of the model files, in-process, best of --repeat;
- `reconciler --repo DIR -d bench --state <missing file> plan --format json|text`
  as a subprocess with stdout to /dev/null: wall time and peak RSS, best of --repeat;
- optionally (--against), `plan --against HEAD`: a plan against a record of the same
  model, which exercises the diff with every instance present on both sides;
- fixed overhead: bare interpreter start-up and `reconciler --version`;
- once, the goal size in-process under cProfile, with the garbage collector on and off,
  and the time the collector takes: bench/out/plan-profile.txt (bench/out is git-ignored).

With --write-results the report replaces the `## plan` section of bench/RESULTS.md.

Run `python3 bench/plan.py -h` for the options; bench/README.md has examples.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import importlib.util
import io
import json
import os
import platform
import pstats
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import yaml
from results import write_section  # beside this script

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
RESULTS_FILE = BENCH_DIR / "RESULTS.md"
SECTION = "## plan"
GNU_TIME = Path("/usr/bin/time")  # `-f %M`: a process's own peak RSS

DEPLOYMENT = "bench"
MODEL_FILES = (
    "machines.yaml",
    "physical.yaml",
    "packages.yaml",
    "services.yaml",
    "distribution.yaml",
)
SHARED_LIBS = 5  # lib-0 … lib-4, each depending on the one before
SERVICES_PER_PACKAGE = 40  # 10,000 instances → 250 app packages

DEFAULT_SIZES = "100x10,1000x10,2000x10"
QUICK_SIZES = "50x5,100x5"
GOAL_SIZE = "1000x10"
GOAL_RATIO = 3.0
GOAL_RSS_MB = 600.0
GOAL_DOUBLING = 2.0 * 1.15


@dataclass(frozen=True)
class Size:
    machines: int
    per_machine: int

    @classmethod
    def parse(cls, text: str) -> Size:
        m = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", text)
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: write a size as MACHINESxSERVICES")
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
    code: int = 0  # exit status


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
    def ratio_json(self) -> float:
        return self.json.seconds / self.parse_s

    @property
    def ratio_text(self) -> float:
        return self.text.seconds / self.parse_s

    @property
    def ratio_json_nogc(self) -> float:
        return self.json.seconds / self.parse_nogc_s

    @property
    def rss_mb(self) -> float:
        return max(self.json.rss_mb, self.text.rss_mb)


# --- the models repository ---------------------------------------------------------


def generate(root: Path, size: Size, env: str) -> None:
    """Write and commit a models repository of `size` with machines of targetEnv `env`."""
    root.mkdir(parents=True, exist_ok=True)
    mw = max(4, len(str(size.machines - 1)))
    sw = max(2, len(str(size.per_machine - 1)))
    n_apps = max(1, size.instances // SERVICES_PER_PACKAGE)
    aw = max(3, len(str(n_apps - 1)))
    machines = [f"m{i:0{mw}d}" for i in range(size.machines)]
    apps = [f"app-{j:0{aw}d}" for j in range(n_apps)]
    libs = [f"lib-{k}" for k in range(SHARED_LIBS)]

    files: dict[str, str] = {}
    files["reconciler.yaml"] = (
        "deployments:\n"
        f"  {DEPLOYMENT}:\n"
        f"    models: [{', '.join(MODEL_FILES)}]\n"
        "    branch: main\n"
        "    autoApply: false\n"
    )

    out = ["description: synthetic benchmark model (bench/plan.py)\n", "machines:\n"]
    for i, m in enumerate(machines):
        out.append(
            f"  {m}:\n"
            f"    properties: {{zone: z{i % 8}, rack: {i % 40}}}\n"
            f"    packages: [{libs[0]}]\n"
        )
    files["machines.yaml"] = "".join(out)

    out = ["machines:\n"]
    for m in machines:
        if env == "ssh":
            # Documentation names (RFC 6761 .example): never contacted, plan does no I/O
            # on machines, and unlike 203.0.113.0/24 there are enough for 2,000 machines.
            deployment = (
                f"      targetEnv: ssh\n      ssh: {{host: {m}.bench.example, user: deploy}}\n"
            )
        else:
            deployment = "      targetEnv: local\n"
        out.append(f"  {m}:\n    deployment:\n{deployment}      maxParallel: 8\n")
    files["physical.yaml"] = "".join(out)

    out = ["packages:\n"]
    for k, lib in enumerate(libs):
        deps = f"    deps: [{libs[k - 1]}]\n" if k else ""
        out.append(f"  {lib}:\n    src: packages/{lib}\n{deps}")
        files[f"packages/{lib}/lib/{lib}.sh"] = f"# {lib}\nexport LIB_{k}=1\n"
    for j, app in enumerate(apps):
        build = '    build: "cp -r $src/. $out/"\n' if j % 2 else ""
        out.append(
            f"  {app}:\n    src: packages/{app}\n{build}    deps: [{libs[j % SHARED_LIBS]}]\n"
        )
        files[f"packages/{app}/bin/x"] = f"#!/bin/sh\n# {app}\nexec sleep infinity\n"
    files["packages.yaml"] = "".join(out)

    services = ["services:\n"]
    distribution = ["distribution:\n"]
    for i, m in enumerate(machines):
        for k in range(size.per_machine):
            name = f"{m}-s{k:0{sw}d}"
            app = apps[(i * size.per_machine + k) * n_apps // size.instances]
            depends = f"    dependsOn: [{m}-s{k - 1:0{sw}d}]\n" if k else ""
            services.append(
                f"  {name}:\n"
                f"    package: {app}\n"
                "    type: process\n"
                "    command: bin/x\n"
                "    port: auto\n"
                f"{depends}"
                "    env:\n"
                "      LOG_LEVEL: info\n"
                f"      WORKERS: {1 + k % 4}\n"
                "    healthCheck: {http: /health, timeout: 5s}\n"
            )
            distribution.append(f"  {name}: [{m}]\n")
    files["services.yaml"] = "".join(services)
    files["distribution.yaml"] = "".join(distribution)

    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for rel in files:
        if rel.endswith("/bin/x"):
            (root / rel).chmod(0o755)
    git = [
        "git",
        "-c",
        "user.name=bench",
        "-c",
        "user.email=bench@example.invalid",
        "-c",
        "commit.gpgsign=false",
    ]
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    message = f"bench model {size.label} ({env})"
    subprocess.run([*git, "commit", "-q", "-m", message], cwd=root, check=True)


def yaml_files(root: Path) -> list[Path]:
    return [root / "reconciler.yaml", *(root / f for f in MODEL_FILES)]


# --- measuring -----------------------------------------------------------------------


def parse_seconds(paths: Sequence[Path], repeat: int, collect: bool = True) -> float:
    """Best time to parse the files (already read into memory) with the C loader.

    collect=False measures with the garbage collector off: at 10,000 services it is
    more than half of yaml.load's time, and a loader can avoid it (gc.freeze/disable).
    """
    blobs = [p.read_bytes() for p in paths]
    best = float("inf")
    was_enabled = gc.isenabled()
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


_SNAPSHOT: list[Path] = []  # the copy of reconciler/ children import, once taken


def child_env() -> dict[str, str]:
    """The environment of measured processes: no state DB override, the source snapshot
    first on the path, and byte code cached like an installed tool's. Where
    PYTHONDONTWRITEBYTECODE is set, every run would compile reconciler's modules again;
    the cache then goes under bench/out, not the source tree."""
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_STATE"}
    if env.pop("PYTHONDONTWRITEBYTECODE", None):
        env.setdefault("PYTHONPYCACHEPREFIX", str(OUT_DIR / "pycache"))
    if _SNAPSHOT:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(_SNAPSHOT[0]), *filter(None, [env.get("PYTHONPATH")])]
        )
    return env


def package_dir() -> Path:
    spec = importlib.util.find_spec("reconciler")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("reconciler is not installed in this interpreter")
    return Path(next(iter(spec.submodule_search_locations)))


def take_snapshot(ref: str | None) -> None:
    """Copy reconciler/ as it is now (or at commit `ref`), so that edits made during a
    long run cannot mix two versions into one table. Children import the copy."""
    target = OUT_DIR / "snapshot"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    src = package_dir()
    if ref is None:
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(src, target / "reconciler", ignore=ignore)
    else:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", ref, "--", "."],
            cwd=src,
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4+
                tar.extractall(target / "reconciler", filter="data")
            else:  # our own archive of our own repository
                tar.extractall(target / "reconciler")
    _SNAPSHOT[:] = [target]


def source_version(ref: str | None) -> str:
    """The commit of the measured source, whether reconciler/ had uncommitted changes,
    and a digest of the .py files measured."""
    pkg = _SNAPSHOT[0] / "reconciler" if _SNAPSHOT else package_dir()
    digest = hashlib.sha256()
    for path in sorted(pkg.rglob("*.py")):
        digest.update(path.relative_to(pkg).as_posix().encode() + b"\0" + path.read_bytes())
    src = package_dir()

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=src, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", f"{ref or 'HEAD'}^{{commit}}")
    where = f"commit {commit}" if commit else "no Git checkout"
    if ref is None and git("status", "--porcelain", "--", "."):
        where += " + uncommitted changes in reconciler/"
    how = "live tree" if not _SNAPSHOT else f"snapshot of {ref}" if ref else "snapshot"
    return f"{where} ({how}, sources sha256 {digest.hexdigest()[:12]})"


def run_once(
    cmd: Sequence[str], stdout: int | IO[bytes] = subprocess.DEVNULL, check: bool = True
) -> Timing:
    """Run `cmd`: its wall time and its peak RSS.

    The RSS comes from GNU time (`-f %M`) when there is one: wait4's ru_maxrss of a direct
    child also counts the pages it had before exec, i.e. this (much larger) process's.
    """
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss:
        wrapped = list(cmd)
        if GNU_TIME.is_file():
            wrapped = [str(GNU_TIME), "-q", "-f", "%M", "-o", rss.name, *cmd]
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=stdout, stderr=err, env=child_env())
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if check and proc.returncode != 0:
            err.seek(0)
            detail = err.read().decode(errors="replace")[-4000:]
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{detail}")
        kib = usage.ru_maxrss  # KiB on Linux
        if GNU_TIME.is_file():
            lines = rss.read().split()
            kib = int(lines[-1]) if lines and lines[-1].isdigit() else kib
    return Timing(seconds, kib / 1024, proc.returncode)


def best_of(cmd: Sequence[str], repeat: int, check: bool = True, warm_up: bool = False) -> Timing:
    """The best wall time of `repeat` runs, and the highest peak RSS among them."""
    if warm_up:
        run_once(cmd, check=check)
    runs = [run_once(cmd, check=check) for _ in range(repeat)]
    return Timing(min(t.seconds for t in runs), max(t.rss_mb for t in runs), runs[-1].code)


def reconciler_cmd() -> list[str]:
    """The console script beside this interpreter (not a pyenv shim), else `-m reconciler`."""
    script = Path(sys.executable).parent / "reconciler"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "reconciler"]


def plan_args(repo: Path, state: Path, fmt: str) -> list[str]:
    return ["--repo", str(repo), "-d", DEPLOYMENT, "--state", str(state), "plan", "--format", fmt]


def check_plan(cmd: list[str], repo: Path, state: Path, size: Size) -> None:
    """One untimed run (also a warm-up) to make sure the plan is what we think it is."""
    with tempfile.TemporaryFile() as out:
        run_once([*cmd, *plan_args(repo, state, "json")], stdout=out)
        out.seek(0)
        summary = json.load(out)["summary"]
    if summary["toActivate"] != size.instances or summary["machinesToAdd"] != size.machines:
        raise RuntimeError(f"unexpected plan for {size.label}: {summary}")
    if state.exists():
        raise RuntimeError(f"plan created the state file {state}")


def measure(
    cmd: list[str], repo: Path, env: str, size: Size, repeat: int, against: bool = False
) -> Row:
    state = repo.parent / f"state-{size.slug}-{env}" / "missing.db"
    check_plan(cmd, repo, state, size)
    files = yaml_files(repo)
    against_cmd = [*cmd, *plan_args(repo, state, "json"), "--against", "HEAD"]
    return Row(
        env=env,
        size=size,
        yaml_bytes=sum(p.stat().st_size for p in files),
        parse_s=parse_seconds(files, repeat),
        parse_nogc_s=parse_seconds(files, repeat, collect=False),
        json=best_of([*cmd, *plan_args(repo, state, "json")], repeat),
        text=best_of([*cmd, *plan_args(repo, state, "text")], repeat),
        against=best_of(against_cmd, repeat) if against else None,
    )


# Runs in a child interpreter: `reconciler.cli.main(argv)` in-process, optionally under
# cProfile, timing every garbage-collector pass with gc.callbacks; results as JSON.
_DRIVER = """
import cProfile, gc, json, sys, time
out, prof_path, collect, *argv = sys.argv[1:]
if collect == "off":
    gc.disable()
gens = [[0, 0.0], [0, 0.0], [0, 0.0]]
began = [0.0]
def on_gc(phase, info):
    if phase == "start":
        began[0] = time.perf_counter()
    else:
        g = gens[info["generation"]]
        g[0] += 1
        g[1] += time.perf_counter() - began[0]
gc.callbacks.append(on_gc)
prof = cProfile.Profile() if prof_path else None
start = time.perf_counter()
if prof:
    prof.enable()
try:
    from reconciler.cli import main
    main(argv)
except SystemExit as e:
    code = e.code
else:
    code = 0
finally:
    if prof:
        prof.disable()
wall = time.perf_counter() - start
if prof:
    prof.dump_stats(prof_path)
with open(out, "w") as f:
    json.dump({"wall": wall, "code": code, "gc": gens}, f)
"""


@dataclass(frozen=True)
class DriverRun:
    wall: float  # from the import of reconciler.cli to the end of main()
    gc: list[tuple[int, float]]  # per generation: collections, seconds

    @property
    def gc_seconds(self) -> float:
        return sum(s for _, s in self.gc)

    def describe(self) -> str:
        per_gen = ", ".join(f"gen{g}: {n} in {s:.2f} s" for g, (n, s) in enumerate(self.gc))
        return (
            f"{self.wall:.2f} s in main(), of which {self.gc_seconds:.2f} s "
            f"({self.gc_seconds / self.wall:.0%}) in the garbage collector ({per_gen})"
        )


def drive(args: Sequence[str], prof: Path | None, collect: bool = True) -> DriverRun:
    """`reconciler ARGS` in a child interpreter, under cProfile if `prof` is given."""
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        gc_arg = "on" if collect else "off"
        cmd = [sys.executable, "-c", _DRIVER, out.name, str(prof or ""), gc_arg, *args]
        run_once(cmd)
        data = json.load(out)
    if data["code"] not in (0, None):
        raise RuntimeError(f"reconciler {' '.join(args)} exited {data['code']}")
    return DriverRun(data["wall"], [(int(n), float(s)) for n, s in data["gc"]])


def profile(repo: Path, size: Size, top: int) -> tuple[Path, DriverRun]:
    """The plan (json) under cProfile, with the garbage collector on and off: top functions
    and GC time to a text file."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    args = plan_args(repo, repo.parent / "state-profile" / "missing.db", "json")
    plain = drive(args, None)  # GC time without the profiler's overhead
    no_gc = drive(args, None, collect=False)
    buf = io.StringIO()
    buf.write(
        f"reconciler plan --format json, {size.label} ({size.instances:,} instances), "
        f"empty state ({dt.datetime.now().isoformat(timespec='seconds')})\n\n"
        f"Without profiler:        {plain.describe()}\n"
        f"Without profiler, GC off: {no_gc.wall:.2f} s in main()\n"
    )
    for collect, name in ((True, "plan.prof"), (False, "plan-nogc.prof")):
        prof = OUT_DIR / name
        run = drive(args, prof, collect)
        state = "on" if collect else "off"
        buf.write(f"\n{'#' * 80}\n# cProfile, garbage collector {state}: {prof}\n")
        if collect:
            buf.write(
                f"# {run.describe()}\n"
                "# A GC pass is charged to whatever function allocated when it began, so the\n"
                "# own time of allocation-heavy functions (load_yaml above all) includes GC.\n"
            )
        else:
            buf.write("# What the code itself costs, without GC pauses mixed in.\n")
        buf.write(f"{'#' * 80}\n")
        listings = (
            ("cumulative", (top,), f"top {top} by cumulative time"),
            ("tottime", (top,), f"top {top} by own time (tottime)"),
            ("cumulative", ("reconciler/", top), f"top {top} of reconciler's own functions"),
        )
        for key, restrictions, title in listings:
            buf.write(f"\n{'=' * 20} GC {state}: {title} {'=' * 20}\n")
            pstats.Stats(str(prof), stream=buf).sort_stats(key).print_stats(*restrictions)
    target = OUT_DIR / "plan-profile.txt"
    target.write_text(_shorten_paths(buf.getvalue()))
    return target, plain


def _shorten_paths(text: str) -> str:
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")}
    roots.add(str(BENCH_DIR.parent))
    for root in sorted(roots, key=len, reverse=True):
        text = text.replace(root.rstrip(os.sep) + os.sep, "")
    return text


# --- reporting -----------------------------------------------------------------------


def table(rows: Sequence[Row]) -> str:
    against = any(r.against for r in rows)
    head = (
        "| env | size | instances | YAML bytes | parse s | plan s (json) | plan s (text) "
        "| ratio json | ratio text | peak RSS MB | parse s, GC off | ratio json vs GC off |"
    )
    lines = [
        head + (" plan s (--against HEAD) |" if against else ""),
        "|---|---|" + "--:|" * (10 + against),
    ]
    for r in rows:
        line = (
            f"| {r.env} | {r.size.label} | {r.size.instances:,} | {r.yaml_bytes:,} "
            f"| {r.parse_s:.3f} | {r.json.seconds:.2f} | {r.text.seconds:.2f} "
            f"| {r.ratio_json:.1f}× | {r.ratio_text:.1f}× | {r.rss_mb:.0f} "
            f"| {r.parse_nogc_s:.3f} | {r.ratio_json_nogc:.1f}× |"
        )
        if against:
            line += f" {r.against.seconds:.2f} |" if r.against else " |"
        lines.append(line)
    return "\n".join(lines)


def doubling_lines(rows: Sequence[Row]) -> list[str]:
    out = []
    for env in dict.fromkeys(r.env for r in rows):
        mine = [r for r in rows if r.env == env]
        if len(mine) < 2:
            continue
        a, b = mine[-2], mine[-1]
        growth = b.size.instances / a.size.instances
        out.append(
            f"- {env}, {a.size.label} → {b.size.label} ({growth:g}× the instances): "
            f"plan json {b.json.seconds / a.json.seconds:.2f}×, "
            f"text {b.text.seconds / a.text.seconds:.2f}×, "
            f"parse {b.parse_s / a.parse_s:.2f}×, "
            f"peak RSS {b.rss_mb / a.rss_mb:.2f}×"
            + (
                f", plan --against HEAD {b.against.seconds / a.against.seconds:.2f}×"
                if a.against and b.against
                else ""
            )
        )
    return out


def goal_lines(rows: Sequence[Row], goal: Size) -> list[str]:
    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    out = []
    for r in rows:
        if r.size != goal:
            continue
        ratio = max(r.ratio_json, r.ratio_text)
        out.append(
            f"- {r.env}, {goal.label}: plan within {GOAL_RATIO:g}× parse — "
            f"{verdict(ratio <= GOAL_RATIO)} (json {r.ratio_json:.1f}×, text {r.ratio_text:.1f}×); "
            f"peak RSS under {GOAL_RSS_MB:.0f} MB — {verdict(r.rss_mb < GOAL_RSS_MB)} "
            f"({r.rss_mb:.0f} MB)"
        )
        doubled = [d for d in rows if d.env == r.env and d.size.instances == 2 * r.size.instances]
        for d in doubled:
            worst = max(d.json.seconds / r.json.seconds, d.text.seconds / r.text.seconds)
            out.append(
                f"- {r.env}, {goal.label} → {d.size.label}: time at most "
                f"{GOAL_DOUBLING:.2f}× — {verdict(worst <= GOAL_DOUBLING)} ({worst:.2f}×)"
            )
    return out


def machine_facts() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    git_version = subprocess.run(
        ["git", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    import pydantic

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"nproc {usable} ({cpu}), load average {load} at the start, "
        f"{platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, PyYAML {yaml.__version__} "
        f"(libyaml: {yaml.__with_libyaml__}), pydantic {pydantic.VERSION}, {git_version}"
    )


# --- main ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time `reconciler plan` from empty state against PyYAML's C loader.",
    )
    p.add_argument(
        "--sizes",
        default=None,
        help=f"comma-separated MACHINESxSERVICES sizes (default {DEFAULT_SIZES})",
    )
    p.add_argument("--machines", type=int, help="one size: this many machines")
    p.add_argument(
        "--services-per-machine", type=int, default=10, help="with --machines (default 10)"
    )
    p.add_argument("--quick", action="store_true", help=f"small sizes ({QUICK_SIZES}), 1 run")
    p.add_argument("--repeat", type=int, default=None, help="runs per timing, best kept (3)")
    p.add_argument(
        "--envs",
        default="ssh,local",
        help="machine targetEnvs to generate, comma-separated: ssh, local (default both)",
    )
    p.add_argument(
        "--profile-size",
        type=Size.parse,
        default=None,
        help=f"size to profile (default {GOAL_SIZE} if measured, else the largest)",
    )
    p.add_argument(
        "--against",
        action="store_true",
        help="also time `plan --against HEAD` (a plan against a record of the same model)",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    p.add_argument("--top", type=int, default=25, help="functions per profile listing (25)")
    p.add_argument("--out", type=Path, help="generate the repositories here and keep them")
    p.add_argument(
        "--live",
        action="store_true",
        help="import reconciler from its tree, not a snapshot taken at the start",
    )
    p.add_argument(
        "--at",
        metavar="REF",
        help="measure reconciler/ as committed at REF (a snapshot), e.g. to compare a change",
    )
    p.add_argument(
        "--write-results",
        action="store_true",
        help=f"write the table into {RESULTS_FILE.relative_to(BENCH_DIR.parent)} ({SECTION})",
    )
    args = p.parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    args.command = " ".join(["python3 bench/plan.py", *given])
    if args.machines is not None:
        spec = f"{args.machines}x{args.services_per_machine}"
    else:
        spec = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    try:
        sizes = {Size.parse(s) for s in spec.split(",") if s.strip()}
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    if not sizes:
        p.error("no sizes given")
    args.sizes = sorted(sizes, key=lambda s: (s.instances, s.machines))
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    args.envs = [e.strip() for e in args.envs.split(",") if e.strip()]
    if not args.envs or set(args.envs) - {"ssh", "local"}:
        p.error("--envs takes ssh and/or local")
    return args


def report(
    args: argparse.Namespace,
    facts: str,
    measured: str,
    rows: Sequence[Row],
    overhead: tuple[Timing, Timing],
    profiled: tuple[Path, DriverRun, str] | None,
) -> str:
    """The `## plan` section of RESULTS.md: when, where, how, the table, the verdicts."""
    startup, version = overhead
    goal = Size.parse(GOAL_SIZE)
    cmd = reconciler_cmd()
    runner = "reconciler" if len(cmd) == 1 else " ".join(cmd)
    date = dt.datetime.now().astimezone().isoformat(timespec="minutes")
    runs = f"{args.repeat} run{'s' * (args.repeat != 1)}"
    body = [
        SECTION,
        "",
        "<!-- Written by `bench/plan.py --write-results`; a new run replaces this section. -->",
        "",
        f"Date: {date}. Machine: {facts}.",
        "",
        f"Measured: reconciler at {measured}.",
        "",
        f"Command: `{args.command}` — best of {runs} per timing. Plan: "
        f"`{runner} --repo DIR -d {DEPLOYMENT} --state <missing file> plan --format json|text "
        "> /dev/null` (wall time and peak RSS of the process). Parse: "
        "`yaml.load(bytes, Loader=yaml.CSafeLoader)` of reconciler.yaml and the "
        f"{len(MODEL_FILES)} model files, in-process, GC on (as called) and off. Machines: "
        "`ssh` (ssh.host given, nothing allocated) or `local` (addresses allocated).",
        "",
        table(rows),
        "",
        f"Fixed overhead: `python -c pass` {startup.seconds:.3f} s ({startup.rss_mb:.0f} MB); "
        f"`reconciler --version` {version.seconds:.3f} s ({version.rss_mb:.0f} MB, "
        f"exit status {version.code}).",
        "",
    ]
    if doubled := doubling_lines(rows):
        body += ["Doubling (last two sizes):", "", *doubled, ""]
    if goals := goal_lines(rows, goal):
        body += ["Goals:", "", *goals, ""]
    if profiled:
        path, run, what = profiled
        body.append(
            f"Profile ({what}): `{path.relative_to(BENCH_DIR.parent)}` (git-ignored). "
            f"Garbage collector in that plan: {run.describe()}."
        )
    return "\n".join(body).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not getattr(yaml, "__with_libyaml__", False):
        print("PyYAML is built without libyaml: no CSafeLoader to compare with", file=sys.stderr)
        return 1
    cmd = reconciler_cmd()
    if args.live and args.at:
        print("--live and --at exclude each other", file=sys.stderr)
        return 1
    if not args.live:
        take_snapshot(args.at)
    facts = machine_facts()
    version_text = source_version(args.at)
    print(f"# {facts}\n# reconciler: {' '.join(cmd)}, {version_text}", flush=True)
    base = args.out.resolve() if args.out else Path(tempfile.mkdtemp(prefix="reconciler-bench-"))
    try:
        startup = best_of([sys.executable, "-c", "pass"], max(args.repeat, 5), warm_up=True)
        # `reconciler --version` may exit non-zero; its cost is still the start-up.
        version = best_of([*cmd, "--version"], max(args.repeat, 5), check=False, warm_up=True)
        print(
            f"# start-up: python -c pass {startup.seconds:.3f} s ({startup.rss_mb:.0f} MB), "
            f"reconciler --version {version.seconds:.3f} s ({version.rss_mb:.0f} MB)",
            flush=True,
        )
        rows: list[Row] = []
        repos: dict[tuple[str, Size], Path] = {}
        for env in args.envs:
            for size in args.sizes:
                repo = base / f"{size.slug}-{env}" / "models"
                if repo.parent.exists():
                    shutil.rmtree(repo.parent)
                t0 = time.perf_counter()
                generate(repo, size, env)
                gen_s = time.perf_counter() - t0
                row = measure(cmd, repo, env, size, args.repeat, args.against)
                repos[(env, size)] = repo
                rows.append(row)
                print(
                    f"# {env} {size.label}: generated in {gen_s:.1f} s; parse {row.parse_s:.3f} s"
                    f" (GC off {row.parse_nogc_s:.3f} s), plan json {row.json.seconds:.2f} s, "
                    f"text {row.text.seconds:.2f} s, {row.rss_mb:.0f} MB",
                    flush=True,
                )

        profiled = None
        if not args.no_profile:
            goal = Size.parse(GOAL_SIZE)
            size = args.profile_size or (goal if goal in args.sizes else args.sizes[-1])
            env = args.envs[0]
            repo = repos.get((env, size)) or base / f"{size.slug}-{env}" / "models"
            if not repo.exists():
                generate(repo, size, env)
            path, run = profile(repo, size, args.top)
            profiled = (path, run, f"{env}, {size.label}, json")

        text = report(args, facts, version_text, rows, (startup, version), profiled)
        print(f"\n{text}")
        if args.write_results:
            write_section(RESULTS_FILE, SECTION, text)
            print(f"# wrote {SECTION!r} in {RESULTS_FILE}")
        if args.out:
            print(f"# repositories kept in {base}")
    finally:
        if not args.out:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
