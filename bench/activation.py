#!/usr/bin/env python3
"""Benchmark the transition of `reconciler apply` (SPEC §3 step 5): does the wall time of
activating a dependency graph follow its critical path?

30 `process` services in 3 layers of 10; every service of layer k dependsOn every service
of layer k-1. Each service runs the same small program, which sleeps DELAY seconds (0.2)
after it starts and only then listens on $HOST:$PORT: a service that takes 200 ms to become
healthy. The health check is `tcp: true`, so an instance is active once it accepts a
connection. The critical path is therefore 3 × DELAY = 0.6 s.

Configurations (each a fresh deployment: new state DB, new machine folders):

- **parallel**: the 30 services spread over 3 `local` machines (service i of a layer on
  machine i mod 3; explicit addresses 127.0.77.11-13), `maxParallel: 10`.
- **serial**: the same services on one `local` machine (127.0.77.21), `maxParallel: 1` —
  the baseline: one activation at a time.
- with `DELAY` 0 as well (not with --quick): the same graphs with services that listen at
  once, which shows the fixed cost of an activation alone.

Measured per run: the wall time of `reconciler --repo DIR --state DB -d act apply --yes
--format json`, and from the state DB the attempt's start and the journal (`at` is when a
step ended): the **activation window** runs from the end of the last `switch-profile` (the
activations start right after it) to the end of the last `activate`. Each service program
also writes, into its instance log, when its process was forked (from /proc), when its
script began and when it listened: that splits every layer into dispatch (the agent
starting the program), interpreter start, the DELAY itself and detection (health poll,
answer, journal write). After each run the deployment is destroyed (`reconciler …
destroy --yes`, timed too); whatever is still running under the bench's folder is killed.

Goal (issue 4): activation window ≤ 1.3 × critical path, with the fixed overhead explained.

With --write-results the report replaces the `## activation` section of bench/RESULTS.md.
Run `python3 bench/activation.py -h` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
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
SNAPSHOT_DIR = OUT_DIR / "activation-snapshot"
RESULTS_FILE = BENCH_DIR / "RESULTS.md"
SECTION = "## activation"
DEPLOYMENT = "act"
LAYERS = 3
PER_LAYER = 10
MACHINES = 3
DELAY = 0.2
FIRST_PORT = 9100
PARALLEL_ADDRESSES = ["127.0.77.11", "127.0.77.12", "127.0.77.13"]
SERIAL_ADDRESS = "127.0.77.21"
# what a machine reached over SSH gets (sshd's default); the caller's PATH may start with
# shims (pyenv: ~80 ms per `python3`) that a real machine does not have
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GOAL_RATIO = 1.3

# The service: DELAY seconds after it starts it listens, then answers every connection
# with a one-line HTTP 200. It logs (to its instance log) when its process was forked
# (/proc/self/stat starttime, 10 ms ticks), when the script began and when it listened.
PROGRAM = '''\
#!/usr/bin/env python3
"""Bench service: listens on $HOST:$PORT $DELAY seconds after it starts."""
import json
import os
import socket
import time

start = time.time()
boot = time.clock_gettime(time.CLOCK_BOOTTIME)
with open("/proc/self/stat") as f:
    ticks = int(f.read().rsplit(")", 1)[1].split()[19])
forked = start - (boot - ticks / os.sysconf("SC_CLK_TCK"))
time.sleep(float(os.environ.get("DELAY", "0.2")))
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((os.environ["HOST"], int(os.environ["PORT"])))
sock.listen(128)
ready = time.time()
print(json.dumps({"bench": {"forked": forked, "start": start, "ready": ready}}), flush=True)
while True:
    conn, _ = sock.accept()
    with conn:
        conn.settimeout(1.0)
        try:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n")
        except OSError:
            pass
'''


# --- the reconciler under test -------------------------------------------------------------


def take_snapshot(ref: str | None) -> str:
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
    if SNAPSHOT_DIR.exists():
        env["PYTHONPATH"] = os.pathsep.join(
            [str(SNAPSHOT_DIR), *filter(None, [env.get("PYTHONPATH")])]
        )
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


# --- models --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    layout: str  # "parallel" or "serial"
    delay: float

    @property
    def label(self) -> str:
        return f"{self.layout}, {self.delay * 1000:.0f} ms"

    @property
    def slug(self) -> str:
        return f"{self.layout}-{self.delay * 1000:.0f}ms"

    @property
    def addresses(self) -> list[str]:
        return PARALLEL_ADDRESSES if self.layout == "parallel" else [SERIAL_ADDRESS]

    @property
    def max_parallel(self) -> int:
        return PER_LAYER if self.layout == "parallel" else 1

    @property
    def critical_path(self) -> float:
        return LAYERS * self.delay

    @property
    def serial_sum(self) -> float:
        return LAYERS * PER_LAYER * self.delay


def service_name(layer: int, i: int) -> str:
    return f"s{layer}-{i}"


def machine_name(index: int) -> str:
    return f"m{index + 1}"


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, env=child_env(False), capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def generate(repo: Path, config: Config) -> None:
    """A committed models repository: one package (the program), 30 services, the machines."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    program = repo / "packages" / "svc" / "bin" / "svc"
    program.parent.mkdir(parents=True)
    program.write_text(PROGRAM)
    program.chmod(0o755)
    machines = {
        machine_name(j): {
            "deployment": {
                "targetEnv": "local",
                "address": address,
                "maxParallel": config.max_parallel,
            }
        }
        for j, address in enumerate(config.addresses)
    }
    services: dict[str, Any] = {}
    distribution: dict[str, list[str]] = {}
    for layer in range(LAYERS):
        for i in range(PER_LAYER):
            name = service_name(layer, i)
            services[name] = {
                "package": "svc",
                "command": "bin/svc",
                "port": FIRST_PORT + layer * PER_LAYER + i,
                "env": {"DELAY": f"{config.delay:g}"},
                "healthCheck": {"tcp": True, "timeout": "10s"},
            }
            if layer:
                services[name]["dependsOn"] = [service_name(layer - 1, d) for d in range(PER_LAYER)]
            distribution[name] = [machine_name(i % len(config.addresses))]
    models = {
        "description": f"bench/activation.py: {config.label}",
        "machines": machines,
        "packages": {"svc": {"src": "packages/svc"}},
        "services": services,
        "distribution": distribution,
    }
    (repo / "models.yaml").write_text(json.dumps(models, indent=1))
    (repo / "reconciler.yaml").write_text(
        json.dumps({"deployments": {DEPLOYMENT: {"models": ["models.yaml"]}}}, indent=1)
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", config.label)


# --- one run -------------------------------------------------------------------------------


def stamp(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Instance:
    key: str
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
    started: float  # attempt started_at
    finished: float  # attempt finished_at
    profiles_done: float  # end of the last switch-profile
    instances: list[Instance]
    destroy_wall: float = float("nan")
    cpu: float = 0.0  # CPU s of the apply process and what it waited for (sh, agents, git)
    busy: float = 0.0  # share of all cores busy during the apply (every process)

    @property
    def wall(self) -> float:
        return self.t1 - self.t0

    @property
    def last_end(self) -> float:
        return max(i.end for i in self.instances)

    @property
    def window(self) -> float:
        """The activation window: last switch-profile end to last activate end."""
        return self.last_end - self.profiles_done

    @property
    def first_fork_window(self) -> float:
        return self.last_end - min(i.forked for i in self.instances)

    def layer(self, k: int) -> list[Instance]:
        return [i for i in self.instances if i.layer == k]

    @property
    def measured_critical(self) -> float:
        """The critical path as the programs took it (fork → listen): per layer the slowest
        (parallel), or the sum over all (serial: one at a time)."""
        if self.config.layout == "serial":
            return sum(i.ready - i.forked for i in self.instances)
        return sum(max(i.ready - i.forked for i in self.layer(k)) for k in range(LAYERS))

    def phases(self) -> list[tuple[str, float]]:
        return [
            ("start-up, models, plan", self.started - self.t0),
            ("build, transfer, lock, switch profiles", self.profiles_done - self.started),
            ("activation window", self.window),
            ("record, unlock, exit", self.t1 - self.last_end),
        ]


def read_program_log(state_root: Path, machine: str, service: str) -> dict[str, float]:
    log = (
        state_root / "machines" / machine / "deployments" / DEPLOYMENT / "instances" / service
    ) / "log"
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith('{"bench"'):
            found: dict[str, float] = json.loads(line)["bench"]
            return found
    raise RuntimeError(f"{log}: the program wrote no timings")


def read_run(config: Config, state: Path, t0: float, t1: float) -> Run:
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        attempt, started, finished, status = db.execute(
            "SELECT id, started_at, finished_at, status FROM attempts WHERE deployment = ? "
            "ORDER BY started_at DESC LIMIT 1",
            [DEPLOYMENT],
        ).fetchone()
        if status != "succeeded":
            raise RuntimeError(f"attempt {attempt}: {status}")
        rows = db.execute(
            "SELECT action, target, detail, at FROM journal WHERE attempt_id = ? "
            "AND step = 'transition' ORDER BY id",
            [attempt],
        ).fetchall()
    finally:
        db.close()
    profiles = [stamp(at) for action, _, _, at in rows if action == "switch-profile"]
    instances = []
    for action, machine, detail, at in rows:
        if action != "activate":
            continue
        key = json.loads(detail)["instance"]
        service = key.split("@", 1)[0]
        got = read_program_log(state.parent, machine, service)
        layer = int(service[1 : service.index("-")])
        instances.append(Instance(key, layer, got["forked"], got["start"], got["ready"], stamp(at)))
    if len(instances) != LAYERS * PER_LAYER:
        raise RuntimeError(f"{len(instances)} activations journaled, not {LAYERS * PER_LAYER}")
    return Run(config, t0, t1, stamp(started), stamp(finished), max(profiles), instances)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_stat() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_share(a: tuple[int, int], b: tuple[int, int]) -> float:
    return (b[0] - a[0]) / max(1, b[1] - a[1])


def _ours(root: Path, also: bytes = b"") -> list[int]:
    """Processes whose command line names a path under `root` (and contains `also`)."""
    needle, found = str(root).encode(), []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
                if needle in cmdline and also in cmdline:
                    found.append(int(name))
    return found


def kill_leftovers(root: Path) -> list[int]:
    """SIGKILL the process group of every recorded instance still running under `root`
    (only processes whose command line names a path under it: ours). Agents still running
    (an apply killed half-way leaves them) are waited for first, up to 15 s: they may yet
    start a program."""
    deadline = time.monotonic() + 15
    while _ours(root, b"agent.py") and time.monotonic() < deadline:
        time.sleep(0.1)
    killed = []
    for pid_file in root.glob("**/deployments/*/instances/*/pid.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = int(json.loads(pid_file.read_text())["pid"])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(root).encode() in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                    killed.append(pid)
    return killed


def run_once(
    config: Config, repo: Path, work: Path, keep_path: bool, log: Callable[[str], None]
) -> Run:
    """A fresh deployment: apply, read the record, destroy; nothing left running."""
    state = work / "state.db"
    base = [*reconciler_cmd(), "--repo", str(repo), "--state", str(state), "-d", DEPLOYMENT]
    env = child_env(keep_path)
    try:
        cpu0, stat0 = children_cpu(), cpu_stat()
        t0 = time.time()
        done = subprocess.run(
            [*base, "apply", "--yes", "--format", "json"],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
        t1 = time.time()
        cpu, busy = children_cpu() - cpu0, busy_share(stat0, cpu_stat())
        if done.returncode != 0:
            raise RuntimeError(
                f"apply ({config.label}) exited {done.returncode}:\n{done.stderr[-3000:]}"
            )
        run = read_run(config, state, t0, t1)  # destroy records an attempt of its own
        run.cpu, run.busy = cpu, busy
        d0 = time.perf_counter()
        gone = subprocess.run(
            [*base, "destroy", "--yes"],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
        run.destroy_wall = time.perf_counter() - d0
        if gone.returncode != 0:
            log(f"destroy ({config.label}) exited {gone.returncode}: {gone.stderr[-1000:]}")
        return run
    finally:
        if killed := kill_leftovers(work):
            log(f"killed {len(killed)} leftover processes of {config.label}")


def run_floor(config: Config, work: Path) -> float:
    """What this machine allows: the same programs started by a plain in-process spawner
    (Popen, then a TCP connect every 5 ms until each listens; a layer after the one
    before; serial: one at a time), no agent, no journal. Wall time; all killed after."""
    work.mkdir(parents=True, exist_ok=True)
    program = work / "svc"
    program.write_text(PROGRAM)
    program.chmod(0o755)
    procs: list[subprocess.Popen[bytes]] = []

    def listening(address: str, port: int) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((address, port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"floor: {address}:{port} never listened") from None
                time.sleep(0.005)

    def start(layer: int, i: int) -> tuple[str, int]:
        address = config.addresses[i % len(config.addresses)]
        port = FIRST_PORT + layer * PER_LAYER + i
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOST": address, "PORT": str(port)}
        env["DELAY"] = f"{config.delay:g}"
        procs.append(
            subprocess.Popen(
                [str(program)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        return address, port

    try:
        t0 = time.perf_counter()
        for layer in range(LAYERS):
            if config.layout == "serial":
                for i in range(PER_LAYER):
                    listening(*start(layer, i))
            else:
                for where in [start(layer, i) for i in range(PER_LAYER)]:
                    listening(*where)
        return time.perf_counter() - t0
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- reporting -----------------------------------------------------------------------------


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


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def main_table(results: Sequence[Result]) -> list[str]:
    lines = [
        "| configuration | machines × maxParallel | critical path s | measured critical s "
        "| in-process spawner s | activation window s | slowest run s | window / critical path "
        "| window / spawner | apply wall s "
        "| apply wall / critical path | CPU s: apply + agents | cores busy | destroy s |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for res in results:
        c, b = res.config, res.best
        ideal = c.critical_path if c.layout == "parallel" else c.serial_sum
        ratio = f"{b.window / ideal:.2f}×" if ideal else "–"
        wall_ratio = f"{res.best_wall / ideal:.2f}×" if ideal else "–"
        lines.append(
            f"| {c.label} | {len(c.addresses)} × {c.max_parallel} | {ideal:.2f} "
            f"| {b.measured_critical:.2f} | {res.floor:.3f} | {b.window:.3f} "
            f"| {res.worst.window:.3f} | {ratio} | {b.window / res.floor:.2f}× "
            f"| {res.best_wall:.2f} | {wall_ratio} | {b.cpu:.2f} | {b.busy:.0%} "
            f"| {b.destroy_wall:.2f} |"
        )
    return lines


def layer_table(run: Run) -> list[str]:
    """Per layer, ms after the layer could begin (previous layer's last activate end, or
    the last switch-profile for the first layer)."""
    lines = [
        "| layer | first fork | last fork | mean fork → script | mean script → listen "
        "| last listen | last activate end = layer ms | over delay ms |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    begin = run.profiles_done
    for k in range(LAYERS):
        insts = run.layer(k)
        end = max(i.end for i in insts)
        lines.append(
            f"| {k + 1} | {ms(min(i.forked for i in insts) - begin)} "
            f"| {ms(max(i.forked for i in insts) - begin)} "
            f"| {ms(statistics.mean(i.start - i.forked for i in insts))} "
            f"| {ms(statistics.mean(i.ready - i.start for i in insts))} "
            f"| {ms(max(i.ready for i in insts) - begin)} | {ms(end - begin)} "
            f"| {ms(end - begin - run.config.delay)} |"
        )
        begin = end
    return lines


def overhead_lines(results: Sequence[Result]) -> list[str]:
    """Where the time over the critical path goes, from this run's numbers."""
    by = {(r.config.layout, r.config.delay): r for r in results}
    out = []
    par = by.get(("parallel", DELAY))
    if par:
        b = par.best
        over = b.window - b.config.critical_path
        insts = b.instances
        dispatch = []
        begin = b.profiles_done
        for k in range(LAYERS):
            layer = b.layer(k)
            dispatch.append(min(i.forked for i in layer) - begin)
            begin = max(i.end for i in layer)
        spread = statistics.mean(
            max(i.forked for i in b.layer(k)) - min(i.forked for i in b.layer(k))
            for k in range(LAYERS)
        )
        detect = statistics.mean(i.end - i.ready for i in insts)
        interp = statistics.mean(i.start - i.forked for i in insts)
        slowest = [max(b.layer(k), key=lambda i: i.end) for k in range(LAYERS)]
        out.append(
            f"- Parallel, {ms(DELAY)} ms: the window is {ms(b.window)} ms, {ms(over)} ms over "
            f"the critical path ({ms(over / LAYERS)} ms per layer). Per instance: from its "
            f"layer's start to its fork (request to the machine's agent, a thread, spawn) "
            f"{ms(statistics.mean(dispatch))} ms for the first of each layer, and the 10 "
            f"forks of a layer spread over {ms(spread)} ms (10 activations at once on "
            f"{len(os.sched_getaffinity(0))} cores); fork to script "
            f"start (interpreter) {ms(interp)} ms on average; listen to its activate step "
            f"journaled as done (health polls 20 ms apart, answer, journal write) "
            f"{ms(detect)} ms on average, "
            + ", ".join(f"{ms(i.end - i.ready)}" for i in slowest)
            + " ms for the last of each layer."
        )
        machine = (par.floor - b.config.critical_path) / LAYERS
        out.append(
            f"- Of the {ms(over / LAYERS)} ms per layer over the delay, {ms(machine)} ms are this "
            f"machine's (the in-process spawner's time over 3 × DELAY: 10 interpreters "
            f"starting at once, and seeing them listen) and {ms(over / LAYERS - machine)} ms "
            "reconciler's: the agent's threads and the journal competing for the same cores, "
            "and the 20 ms between health probes."
        )
    zero = by.get(("parallel", 0.0))
    if zero:
        z = zero.best
        out.append(
            f"- Parallel, 0 ms (programs listen at once): window {ms(z.window)} ms = "
            f"{ms(z.window / LAYERS)} ms per layer of 10 concurrent activations: the fixed "
            "cost of a layer with nothing to wait for."
        )
    ser = by.get(("serial", DELAY))
    if ser and par:
        s = ser.best
        out.append(
            f"- Serial, {ms(DELAY)} ms: {ms(s.window)} ms for 30 activations one at a time = "
            f"{ms(s.window / 30)} ms each ({ms(s.window / 30 - DELAY)} ms over the delay); "
            f"parallel is {s.window / par.best.window:.1f}× faster on the window, "
            f"{ser.best_wall / par.best_wall:.1f}× on the whole apply."
        )
    szero = by.get(("serial", 0.0))
    if szero:
        s = szero.best
        out.append(
            f"- Serial, 0 ms: {ms(s.window)} ms for 30 activations = {ms(s.window / 30)} ms "
            "per activation, one at a time: the fixed cost of one activation."
        )
    return out


def goal_lines(results: Sequence[Result]) -> list[str]:
    out = []
    for res in results:
        c = res.config
        if c.layout != "parallel" or not c.delay:
            continue
        b = res.best
        ratio = b.window / c.critical_path
        out.append(
            f"- {c.label}: activation window ≤ {GOAL_RATIO:g} × critical path "
            f"({ms(c.critical_path)} ms) — {verdict(ratio <= GOAL_RATIO)} ({ratio:.2f}× best, "
            f"{res.worst.window / c.critical_path:.2f}× slowest run; against the critical path "
            f"the programs actually took, {ms(b.measured_critical)} ms: "
            f"{b.window / b.measured_critical:.2f}×; against the in-process spawner, "
            f"{ms(res.floor)} ms: {b.window / res.floor:.2f}×; the whole apply "
            f"{res.best_wall / c.critical_path:.2f}×)"
        )
        for other in results:
            if other.config == Config("serial", c.delay):
                out.append(
                    f"- {c.label} vs serial: {other.best.window / b.window:.1f}× faster "
                    f"(window), {other.best_wall / res.best_wall:.1f}× (apply)"
                )
    return out


def calibrate(python: str, keep_path: bool) -> tuple[float, float]:
    """Best of 10: `python3 -c pass` and `python3 agent.py` (an unknown command: imports,
    then exits), as `sh -c` runs them for a `local` machine."""
    agent = SNAPSHOT_DIR / "reconciler" / "activation" / "agent.py"
    env = child_env(keep_path)

    def best(command: str) -> float:
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            subprocess.run(
                ["sh", "-c", command], env=env, stdin=subprocess.DEVNULL, capture_output=True
            )
            times.append(time.perf_counter() - t0)
        return min(times)

    return best("python3 -c pass"), best(f"python3 {shlex.quote(str(agent))} no-such-command")


def machine_facts(path_python: str) -> str:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"nproc {len(os.sched_getaffinity(0))} ({cpu}), load average {load} at the start, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}; "
        f"`python3` for agents and services: {path_python}"
    )


def report(
    command: str,
    version: str,
    facts: str,
    seconds: float,
    results: Sequence[Result],
    repeat: int,
    keep_path: bool,
    calibration: tuple[float, float],
) -> str:
    now = dt.datetime.now(dt.UTC).isoformat(timespec="minutes")
    path_note = (
        "the caller's PATH"
        if keep_path
        else f"PATH={STANDARD_PATH} (sshd's default, what a real machine has)"
    )
    lines = [
        SECTION,
        "",
        "<!-- Written by `bench/activation.py --write-results`; a new run replaces this "
        "section. -->",
        "",
        f"Date: {now}. Machine: {facts}.",
        "",
        f"Measured: reconciler at {version}.",
        "",
        f"Command: `{command}` — {seconds:.0f} s in all, best of {repeat} run"
        f"{'s' * (repeat != 1)} per configuration (by activation window; configurations "
        "run in rounds). Every run is a fresh deployment (new state DB and machine folders): "
        f"`reconciler --repo DIR --state DB -d {DEPLOYMENT} apply --yes --format json`, with "
        f"{path_note}, then `destroy --yes`.",
        "",
        f"Graph: {LAYERS} layers × {PER_LAYER} `process` services, each service of layer k "
        f"dependsOn all {PER_LAYER} of layer k-1; every service runs one program that sleeps "
        "DELAY after its script starts, then listens; health check `tcp: true` (the agent "
        "probes every 20 ms for 5 s, then every 100 ms). Parallel: service i of a layer on machine "
        f"i mod {MACHINES} (`local`, {', '.join(PARALLEL_ADDRESSES)}), `maxParallel: "
        f"{PER_LAYER}`; serial: one `local` machine ({SERIAL_ADDRESS}), `maxParallel: 1`. "
        "*Critical path*: 3 × DELAY (parallel), 30 × DELAY (serial). *Measured critical*: "
        "per layer the slowest fork → listen of the programs (interpreter start included). "
        "*In-process spawner*: what this machine allows — the same programs started by the "
        "bench itself (Popen, a TCP connect every 5 ms until each listens, layer after "
        "layer; serial one at a time), no agent, no journal (best of the rounds). "
        "*Activation window*: from the end of the last `switch-profile` (the activations "
        "start right after it) to the end of the last `activate` in the journal.",
        "",
        *main_table(results),
        "",
    ]
    par = next((r for r in results if r.config == Config("parallel", DELAY)), None)
    if par:
        b = par.best
        lines += [
            f"Per layer, best parallel {ms(DELAY)} ms run (ms after the layer could begin: "
            "the previous layer's last activate end, for layer 1 the last switch-profile "
            "end):",
            "",
            *layer_table(b),
            "",
            "Phases of that apply (wall clock; the attempt's `started_at`, journal `at`): "
            + "; ".join(f"{name} {ms(s)} ms" for name, s in b.phases())
            + f" — {ms(b.wall)} ms in all.",
            "",
        ]
    bare, agent = calibration
    lines += [
        "Where the time goes:",
        "",
        f"- Calibration (best of 10, `sh -c` as a `local` machine runs it): `python3 -c pass` "
        f"{ms(bare)} ms; `python3 agent.py` with an unknown command (its imports, then exit) "
        f"{ms(agent)} ms. A transition starts one such agent per machine (`agent.py serve`) "
        "and sends it every call (lock, switch-profile, each activate, unlock) as a line; "
        "an activation runs in a thread there, starts the program's interpreter and probes "
        "its health every 20 ms (every 100 ms after 5 s).",
        *overhead_lines(results),
        "",
        "### Goals",
        "",
    ]
    lines += goal_lines(results)
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time the transition of `reconciler apply`: a 3-layer graph of 30 "
        "services against its critical path and a serial baseline."
    )
    p.add_argument("--quick", action="store_true", help="DELAY 0.2 only, one run each")
    p.add_argument("--repeat", type=int, help="runs per configuration, best kept (3; quick 1)")
    p.add_argument(
        "--only",
        default="parallel,serial",
        help="layouts to run, comma-separated: parallel, serial (default both)",
    )
    p.add_argument(
        "--no-zero",
        action="store_true",
        help="skip the DELAY 0 configurations (skipped with --quick anyway)",
    )
    p.add_argument(
        "--keep-path",
        action="store_true",
        help=f"give reconciler the caller's PATH, not {STANDARD_PATH}",
    )
    p.add_argument(
        "--at",
        metavar="REF",
        help="measure reconciler/ as committed at REF (default: the tree as it is now)",
    )
    p.add_argument("--keep", type=Path, help="generate repositories and state here and keep them")
    p.add_argument(
        "--write-results", action="store_true", help=f"write {SECTION} of bench/RESULTS.md"
    )
    args = p.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    args.layouts = [x.strip() for x in args.only.split(",") if x.strip()]
    if not args.layouts or set(args.layouts) - {"parallel", "serial"}:
        p.error("--only takes parallel and/or serial")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    delays = [DELAY] if args.quick or args.no_zero else [DELAY, 0.0]
    configs = [Config(layout, d) for d in delays for layout in args.layouts]
    path = None if args.keep_path else STANDARD_PATH
    python = shutil.which("python3", path=path) or "not found"
    facts = machine_facts(python)
    version = take_snapshot(args.at)
    log(f"measuring reconciler at {version}")
    calibration = calibrate(python, args.keep_path)
    log(f"python3 -c pass {calibration[0]:.3f} s, python3 agent.py {calibration[1]:.3f} s")
    results = {c: Result(c) for c in configs}
    if args.keep:
        base = args.keep.resolve()
        base.mkdir(parents=True, exist_ok=True)
    else:
        base = Path(tempfile.mkdtemp(prefix="bench-activation-"))
    try:
        repos = {}
        for c in configs:
            repos[c] = base / c.slug / "models"
            if repos[c].exists():
                shutil.rmtree(repos[c].parent)
            generate(repos[c], c)
        for round_ in range(args.repeat):
            for c in configs:
                work = base / c.slug / f"run{round_}"
                run = run_once(c, repos[c], work, args.keep_path, log)
                results[c].runs.append(run)
                log(
                    f"{c.label}: apply {run.wall:.2f} s, activation window {run.window:.3f} s "
                    f"(critical {c.critical_path:.2f} s, measured {run.measured_critical:.3f} "
                    f"s), destroy {run.destroy_wall:.2f} s"
                )
                results[c].floors.append(run_floor(c, work / "floor"))
                log(f"{c.label}: in-process spawner {results[c].floors[-1]:.3f} s")
                if not args.keep:
                    shutil.rmtree(work, ignore_errors=True)
    finally:
        if killed := kill_leftovers(base):
            log(f"killed {len(killed)} leftover processes")
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    command = shlex.join(
        ["python3", "bench/activation.py", *(argv if argv is not None else sys.argv[1:])]
    )
    text = report(
        command,
        version,
        facts,
        time.monotonic() - started,
        list(results.values()),
        args.repeat,
        args.keep_path,
        calibration,
    )
    print(text)
    if args.write_results:
        write_section(RESULTS_FILE, SECTION, text)
        log(f"wrote {SECTION!r} in {RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
