"""What the benchmarks share, so that each keeps only what it measures: the reconciler under
test (a snapshot of reconciler/, its console script, the children's environment), scratch
Git repositories, machine facts, CPU and process accounting, the test hosts, what the state
DB recorded of an attempt, the command line and the RESULTS.md sections.

Every use of reconciler's internals, of its state DB's tables and of the test hosts' private
parts is in this module (see "Internals" below), so that a rename is a one-line fix here."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import hashlib
import importlib.util
import io
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"  # git-ignored scratch: profiles, byte code
RESULTS_FILE = BENCH_DIR / "RESULTS.md"
# What a machine reached over SSH gets (sshd's default); the caller's PATH may start with
# shims (pyenv: ~80 ms per `python3`) that a real machine does not have.
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TICK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")

if str(ROOT) not in sys.path:  # tests.testhosts, and reconciler/ when not installed
    sys.path.append(str(ROOT))

if TYPE_CHECKING:  # imported when used: tests.testhosts imports reconciler (the snapshot's)
    from tests.testhosts import TestHost as TestHost
    from tests.testhosts import TestHostNetwork as TestHostNetwork


_SNAPSHOT: list[Path] = []  # the folder children import reconciler from, once taken


def package_dir() -> Path:
    spec = importlib.util.find_spec("reconciler")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("reconciler is not installed in this interpreter")
    return Path(next(iter(spec.submodule_search_locations)))


def take_snapshot(name: str, ref: str | None = None) -> str:
    """Copy reconciler/ (as it is now, or at commit `ref`) to a temporary folder, removed at
    exit, which children import, so that edits made during a long run cannot mix two versions
    into one table. Returns what is measured."""
    src, into = package_dir(), Path(tempfile.mkdtemp(prefix=f"bench-{name}-snapshot-"))
    atexit.register(shutil.rmtree, into, ignore_errors=True)
    pkg = into / "reconciler"
    if ref is None:
        shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(["git", "archive", "--format=tar", ref, "--", "."],
                                 cwd=src, capture_output=True, check=True).stdout  # fmt: skip
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(pkg, filter="data")
    _SNAPSHOT[:] = [into]
    digest = hashlib.sha256()
    for path in sorted(pkg.rglob("*.py")):
        digest.update(path.relative_to(pkg).as_posix().encode() + b"\0" + path.read_bytes())

    def git_out(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=src, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git_out("rev-parse", "--short=12", f"{ref or 'HEAD'}^{{commit}}")
    where = f"commit {commit}" if commit else "no Git checkout"
    if ref is None and git_out("status", "--porcelain", "--", "."):
        where += " + uncommitted changes in reconciler/"
    how = f"snapshot of {ref}" if ref else "snapshot"
    return f"{where} ({how}, sources sha256 {digest.hexdigest()[:12]})"


def measured_package() -> Path:
    """The reconciler/ folder the children run: the snapshot's, else the installed one."""
    return _SNAPSHOT[0] / "reconciler" if _SNAPSHOT else package_dir()


def import_snapshot() -> None:
    """This process imports reconciler from the snapshot too (for what runs in-process)."""
    if (where := str(measured_package().parent)) not in sys.path:
        sys.path.insert(0, where)


def tool(name: str) -> str:
    """A console script beside this interpreter (not a shim on PATH), else on PATH."""
    script = Path(sys.executable).parent / name
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: pip install -e '.[bench]'")
    return found


def reconciler_cmd(
    repo: Path | str | None = None, state: Path | str | None = None, deployment: str = ""
) -> list[str]:
    """The console script, with the global options given: --repo, --state, -d."""
    named = {"--repo": repo, "--state": state, "-d": deployment}
    return [tool("reconciler"), *(x for k, v in named.items() if v for x in (k, str(v)))]


def child_env(standard_path: bool = False) -> dict[str, str]:
    """The environment of measured processes: no state DB or Git overrides, the snapshot
    first on the path, a fixed Git identity, and byte code cached like an installed tool's
    (where PYTHONDONTWRITEBYTECODE is set, under bench/out rather than in the tree)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "RECONCILER_"))}
    if env.pop("PYTHONDONTWRITEBYTECODE", None):
        env.setdefault("PYTHONPYCACHEPREFIX", str(OUT_DIR / "pycache"))
    if _SNAPSHOT:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(_SNAPSHOT[0]), *filter(None, [env.get("PYTHONPATH")])]
        )
    if standard_path:
        env["PATH"] = STANDARD_PATH
    for who in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{who}_NAME"], env[f"GIT_{who}_EMAIL"] = "bench", "bench@example.test"
    env.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", NO_COLOR="1")
    return env


# A benchmark's service: DELAY seconds (0) after it starts it listens on $HOST:$PORT, then
# answers every connection with HTTP 200. It logs (its instance log) when its process was
# forked (/proc/self/stat starttime), when the script began and when it listened.
SERVICE = """\
#!/usr/bin/env python3
import json, os, socket, time
start = time.time()
boot = time.clock_gettime(time.CLOCK_BOOTTIME)
with open("/proc/self/stat") as f:
    ticks = int(f.read().rsplit(")", 1)[1].split()[19])
forked = start - (boot - ticks / os.sysconf("SC_CLK_TCK"))
time.sleep(float(os.environ.get("DELAY", "0")))
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((os.environ["HOST"], int(os.environ["PORT"])))
sock.listen(128)
print(json.dumps({"bench": {"forked": forked, "start": start, "ready": time.time()}}), flush=True)
while True:
    conn, _ = sock.accept()
    with conn:
        conn.settimeout(1.0)
        try:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n")
        except OSError:
            pass
"""


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, env=env or child_env(), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {repo}: {done.stderr.strip()}")
    return done.stdout.strip()


def new_repo(path: Path, service: bool = False) -> Path:
    """An empty work tree on branch main; objects stored uncompressed (set-up, not measured).
    `service`: with SERVICE as packages/svc/bin/svc."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "core.compression", "0")
    git(path, "config", "gc.auto", "0")
    if service:
        write_program(path / "packages" / "svc" / "bin" / "svc", SERVICE)
    return path


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def commit_models(
    repo: Path, message: str, files: dict[str, Any], deployments: dict[str, list[str]],
    **settings: Any,
) -> str:  # fmt: skip
    """Model files (JSON, which is YAML) and reconciler.yaml naming each deployment's (with
    the same `settings` for each: interval, failover …), committed: the new commit."""
    for name, doc in files.items():
        (repo / name).write_text(json.dumps(doc, indent=1))
    config = {"deployments": {d: {"models": m, **settings} for d, m in deployments.items()}}
    (repo / "reconciler.yaml").write_text(json.dumps(config, indent=1))
    return commit(repo, message)


def ssh_machine(host: TestHost, **deployment: Any) -> dict[str, Any]:
    """A machine reached over SSH on a test host (its address, key and host key)."""
    ssh = {"host": host.address, "identityFile": str(host.identity_file), "hostKey": host.host_key}
    return {"deployment": {"targetEnv": "ssh", **deployment, "ssh": ssh}}


def service(port: int, check: str = "tcp", /, **more: Any) -> dict[str, Any]:
    """A `process` service running SERVICE (bin/svc of package svc, unless `more` names
    another), health-checked by a TCP connect or an HTTP GET of `check`."""
    probe = {"tcp": True} if check == "tcp" else {"http": check}
    return {"package": "svc", "command": "bin/svc", "port": port,
            "healthCheck": {**probe, "timeout": "10s"}, **more}  # fmt: skip


def write_program(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def listening(host: str, port: int, timeout: float = 1.0) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout):
        return True
    return False


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def http(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 5
) -> tuple[int, bytes]:
    """A request to `url` (loopback: no proxy): the status and body, an HTTP error's too."""
    try:
        with _OPENER.open(urllib.request.Request(url, body, headers or {}), timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def answer(url: str, timeout: float = 1) -> str | None:
    """The body of a 200 answer from `url`; None when there is none (refused, an error)."""
    with contextlib.suppress(OSError, ValueError):
        status, body = http(url, timeout=timeout)
        return body.decode(errors="replace") if status == 200 else None
    return None


def wait_until(probe: Callable[[], T | None], timeout: float, every: float = 0.02) -> T | None:
    """Ask `probe` every `every` s until its answer is true: that answer; None after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (got := probe()):
        if time.monotonic() > deadline:
            return None
        time.sleep(every)
    return got


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.02) -> T:
    """wait_until, or a RuntimeError saying what did not happen within `timeout` s."""
    if (got := wait_until(probe, timeout, every)) is None:
        raise RuntimeError(f"not within {timeout:g} s: {what}")
    return got


def nproc() -> int:
    return len(os.sched_getaffinity(0))


def loadavg() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def first_line(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    with contextlib.suppress(OSError, IndexError):
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        return (done.stdout or done.stderr).strip().splitlines()[0]
    return f"{argv[0]}: not installed"


def machine_facts(*extra: str) -> str:
    """CPU, load at the start, kernel, Python, and what the benchmark adds (versions)."""
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    system = f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    return ", ".join(
        [f"nproc {nproc()} ({cpu}), load average {loadavg()} at the start", system, *extra]
    )


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_stat() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def proc_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: [0] is field 3 (state) of proc(5)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


class CpuSampler(threading.Thread):
    """Samples a process's own CPU time (not its children's) until it exits: the last
    sample is its total."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.last, self.done = pid, 0.0, threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.is_set():
            if f := proc_fields(self.pid):
                self.last = (int(f[11]) + int(f[12])) / TICK
            self.done.wait(0.02)


@dataclass(frozen=True)
class Ran:
    """A finished command: its output; when it started (wall clock) and took; the CPU time of
    it and of everything it waited for, of its own process alone; the share of all cores
    busy meanwhile (every process)."""

    code: int
    stdout: str
    stderr: str
    t0: float
    wall: float
    cpu: float
    own_cpu: float
    busy: float


def run(cmd: Sequence[str], env: dict[str, str], cwd: Path | None = None, check: bool = True,
        timeout: float = 1200) -> Ran:  # fmt: skip
    """Run `cmd` (stdin empty) to its end and account for it; `check`: fail on an error."""
    cpu0, stat0, t0, start = children_cpu(), cpu_stat(), time.time(), time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        sampler = CpuSampler(proc.pid)
        try:
            code = proc.wait(timeout)
        finally:
            proc.kill()
            sampler.done.set()
            sampler.join()
        wall, cpu = time.perf_counter() - start, children_cpu() - cpu0
        out.seek(0)
        err.seek(0)
        text = [f.read().decode(errors="replace") for f in (out, err)]
    if check and code != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {code}:\n{text[0][-2000:]}{text[1][-3000:]}")
    stat1 = cpu_stat()
    busy = (stat1[0] - stat0[0]) / max(1, stat1[1] - stat0[1])
    return Ran(code, text[0], text[1], t0, wall, cpu, min(sampler.last, cpu), busy)


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def parents() -> dict[int, int]:
    """Every process and its parent's pid."""
    pids = (int(name) for name in os.listdir("/proc") if name.isdigit())
    return {pid: int(f[1]) for pid in pids if (f := proc_fields(pid))}


def pids_naming(root: Path, also: bytes = b"") -> list[int]:
    """Processes (not this one) whose command line names a path under `root` (and `also`)."""
    needle, pids = str(root).encode(), (int(n) for n in os.listdir("/proc") if n.isdigit())
    return [p for p in pids if p != os.getpid() and needle in (c := cmdline(p)) and also in c]


def stop(proc: subprocess.Popen[Any], timeout: float = 60) -> int:
    """SIGTERM (the product settles what is in flight), SIGKILL after `timeout` s: its exit
    status."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            return proc.wait(timeout)
        proc.kill()
    return proc.wait()


@contextlib.contextmanager
def background(
    cmd: Sequence[str], env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`cmd` running meanwhile (stdin empty, its output appended to `log`, else dropped),
    stopped after."""
    with open(log or os.devnull, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        stop(proc)


@contextlib.contextmanager
def workspace(prefix: str, keep: Path | None = None) -> Iterator[Path]:
    """A scratch folder (`keep`: this one, kept), and whatever still runs under it killed."""
    base = keep.resolve() if keep else Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        yield base
    finally:
        kill_leftovers(base)
        if not keep:
            shutil.rmtree(base, ignore_errors=True)  # read-only store paths too: we are root


def kill_leftovers(root: Path) -> list[int]:
    """SIGKILL the process group of every recorded instance still running under `root` (only
    processes whose command line names a path under it, or that run in a folder under it:
    ours), and say so. Agents still
    running (an apply killed half-way leaves them) are waited for first, up to 15 s: they
    may yet start a program."""
    wait_until(lambda: not pids_naming(root, b"agent"), 15, 0.1)
    killed = []
    for pid_file in root.glob("**/deployments/*/instances/*/pid.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, ProcessLookupError):
            pid = int(json.loads(pid_file.read_text())["pid"])
            if str(root).encode() in cmdline(pid) or _runs_under(pid, root):
                os.killpg(pid, signal.SIGKILL)
                killed.append(pid)
    if killed:
        print(f"killed {len(killed)} leftover processes under {root}", file=sys.stderr)
    return killed


def _runs_under(pid: int, root: Path) -> bool:
    """Its working folder is under `root` (an instance such as `exec sleep` names no path)."""
    try:
        return os.readlink(f"/proc/{pid}/cwd").startswith(f"{root}/")
    except OSError:
        return False


# --- Internals: the test hosts' private parts, the state DB, reconciler's modules ----------


def host_network(count: int, workdir: Path) -> TestHostNetwork:
    """`count` fresh OpenSSH test hosts (sshd in network namespaces; tests/testhosts.py)."""
    from tests.testhosts import TestHostNetwork

    return TestHostNetwork(count, workdir)


def hosts_problem() -> str | None:
    """Why test hosts cannot run here (not root, no namespaces …), or None."""
    from tests.testhosts import HostsUnavailableError, check_environment

    try:
        check_environment()
    except HostsUnavailableError as e:
        return str(e)
    return None


def host_veth(net: TestHostNetwork, host: TestHost) -> str:
    """The host's veth in the root namespace (its byte counters are the wire)."""
    return net._state(host).veth


def sessions_cpu(net: TestHostNetwork, hosts: Sequence[TestHost]) -> float | None:
    """CPU seconds of every finished ssh session of the hosts (sshd, shells, tar, python3 …),
    as each sshd listener collected them (cutime + cstime); waits (up to 5 s) until no
    session is open. Programs left running are not in it. None: a listener is gone."""
    try:
        listeners = {net._listener_pid(net._state(h)) for h in hosts}
    except (AttributeError, RuntimeError):
        return None

    def sessions() -> list[int]:
        return [p for p, up in parents().items() if up in listeners and b"sshd" in cmdline(p)]

    wait_until(lambda: not sessions(), 5)
    total = 0.0
    for pid in listeners:
        if (f := proc_fields(pid)) is None:
            return None
        total += (int(f[13]) + int(f[14])) / TICK
    return total


def stamp(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class Step:
    action: str  # switch-profile, activate …
    target: str  # the machine
    detail: dict[str, Any]
    at: float  # when the step ended


@dataclass(frozen=True)
class Attempt:
    started: float
    status: str
    transition: list[Step]  # the journal's transition steps, in order

    def ends(self, action: str) -> list[float]:
        """When each step of `action` (activate, switch-profile, rollout-batch …) ended."""
        return [s.at for s in self.transition if s.action == action]


def bench_times(state: Path, machine: str, deployment: str, instance: str) -> dict[str, float]:
    """SERVICE's last start of an instance on a `local` machine (its log, beside the state):
    when its process forked, when its script began, when it listened ("ready")."""
    log = state.parent / "machines" / machine / "deployments" / deployment / "instances"
    lines = (log / instance / "log").read_text(errors="replace").splitlines()
    return dict(json.loads([x for x in lines if x.startswith('{"bench"')][-1])["bench"])


def last_attempt(state: Path, deployment: str, sha: str | None = None) -> Attempt | None:
    """The deployment's latest attempt (of commit `sha`) as the state DB recorded it. No
    command prints the journal, so this reads the tables (read-only)."""
    uri = f"file:{state}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
        row = db.execute(
            "SELECT id, started_at, status FROM attempts WHERE deployment = ?"
            + (" AND commit_sha = ?" if sha else "")
            + " ORDER BY started_at DESC LIMIT 1",
            [deployment, *([sha] if sha else [])],
        ).fetchone()
        if not row:
            return None
        steps = db.execute(
            "SELECT action, target, detail, at FROM journal WHERE attempt_id = ? "
            "AND step = 'transition' ORDER BY id",
            [row[0]],
        ).fetchall()
    journal = [Step(a, t, json.loads(d) if d else {}, stamp(at)) for a, t, d, at in steps]
    return Attempt(stamp(row[1]), row[2], journal)


def mirror_dir(state: Path, repo: str) -> Path:
    """Where the controller keeps its mirror of a remote repository."""
    return state.parent / "repos" / hashlib.sha256(repo.encode()).hexdigest()[:16]


def agent_script() -> Path | None:
    """The agent the measured reconciler/ ships (its archive, or before it the one script),
    which a machine runs with python3."""
    package = measured_package() / "agent"
    if package.is_dir():
        from reconciler.execute.agent_client import archive

        OUT_DIR.mkdir(exist_ok=True)
        (OUT_DIR / "agent.pyz").write_bytes(archive(package))
        return OUT_DIR / "agent.pyz"
    path = measured_package() / "activation" / "agent.py"
    return path if path.is_file() else None


def desired_machine(name: str, target_env: str, address: str | None, provider: Any) -> Any:
    from reconciler.desired.state import DesiredMachine

    return DesiredMachine(
        name=name, target_env=target_env, address=address, ssh=None, state_dir=None,
        max_parallel=4, compression="auto", profile=(), keys={}, properties={},
        provider=provider, closure=(),
    )  # fmt: skip


def provisioners() -> tuple[Any, Any, Any]:
    """The classes provision.py measures: Ec2Provisioner, ContainerProvisioner and the
    provisioning record (SqliteRecorder)."""
    from reconciler.provision.container import ContainerProvisioner
    from reconciler.provision.ec2 import Ec2Provisioner
    from reconciler.state.provisioning import SqliteRecorder

    return Ec2Provisioner, ContainerProvisioner, SqliteRecorder


async def controller(repo: str, state: Path) -> Any:
    """The controller `reconciler --repo REPO --state STATE run` builds (its deployments
    loaded, its loops made, never started), in this process, on the running event loop.
    `.loops[name].reconcile()` is one poll; `.one_pass(loop)` the whole pass."""
    import asyncio

    from reconciler.controller.run import Controller, RunSettings
    from reconciler.options import Options

    ctl = Controller(RunSettings(opts=Options(repo=repo, state=str(state), quiet=True), once=True))
    ctl.loop = asyncio.get_running_loop()
    await ctl.refresh_deployments()
    return ctl


# Runs in a child interpreter: `reconciler.cli.main(argv)` (the console script's entry point)
# in-process, optionally under cProfile, timing every garbage-collector pass; results as JSON.
_DRIVER = """
import contextlib, cProfile, gc, json, sys, time
out, prof_path, collect, *argv = sys.argv[1:]
if collect == "off":
    gc.disable()
gens, began = [[0, 0.0], [0, 0.0], [0, 0.0]], [0.0]
def on_gc(phase, info):
    if phase == "start":
        began[0] = time.perf_counter()
    else:
        gens[info["generation"]][0] += 1
        gens[info["generation"]][1] += time.perf_counter() - began[0]
gc.callbacks.append(on_gc)
prof = cProfile.Profile() if prof_path else contextlib.nullcontext()
start = time.perf_counter()
with prof:
    try:
        from reconciler.cli import main
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
wall = time.perf_counter() - start
if prof_path:
    prof.dump_stats(prof_path)
with open(out, "w") as f:
    json.dump({"wall": wall, "code": code, "gc": gens}, f)
"""


@dataclass(frozen=True)
class Driven:
    wall: float  # from the import of reconciler.cli to the end of main()
    gc: list[tuple[int, float]]  # per generation: collections, seconds

    def describe(self) -> str:
        total = sum(s for _, s in self.gc)
        per_gen = ", ".join(f"gen{g}: {n} in {s:.2f} s" for g, (n, s) in enumerate(self.gc))
        return (
            f"{self.wall:.2f} s in main(), of which {total:.2f} s ({total / self.wall:.0%}) "
            f"in the garbage collector ({per_gen})"
        )


def drive(args: Sequence[str], prof: Path | None, collect: bool = True) -> Driven:
    """`reconciler ARGS` in a child interpreter, under cProfile if `prof` is given."""
    if prof:
        prof.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        gc_arg = "on" if collect else "off"
        cmd = [sys.executable, "-c", _DRIVER, out.name, str(prof or ""), gc_arg, *args]
        run(cmd, child_env())
        data = json.load(out)
    if data["code"] not in (0, None):
        raise RuntimeError(f"reconciler {' '.join(args)} exited {data['code']}")
    return Driven(data["wall"], [(int(n), float(s)) for n, s in data["gc"]])


class Log:
    """Progress on stderr, with the seconds since the start."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def __call__(self, msg: str) -> None:
        print(f"[{self.seconds:6.1f} s] {msg}", file=sys.stderr, flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def best_of(n: int, what: str = "run") -> str:
    return f"best of {n} {what}{'s' * (n != 1)}"


def write_section(path: Path, section: str, body: str) -> None:
    """Replace (or append) the section headed `section`, keeping the other benchmarks'."""
    lines = (path.read_text() if path.exists() else "# Benchmark results\n").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == section), len(lines))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    gap = [""] if start == len(lines) and lines else []  # a new section after the others
    rest = ["", *lines[end:]] if end < len(lines) else []
    path.write_text("\n".join([*lines[:start], *gap, *body.splitlines(), *rest]) + "\n")


class Bench:
    """One run of a benchmark: its options, its progress log, the reconciler it measures and
    its section of RESULTS.md. The options every benchmark has: --quick (tiny sizes, one run:
    a smoke test that runs the same code paths), --repeat, --at REF and --write-results."""

    def __init__(self, name: str, description: str | None, quick: str, repeat: int = 3) -> None:
        self.name, self.default_repeat, self.log = name, repeat, Log()
        self.options = p = argparse.ArgumentParser(description=description)
        p.add_argument("--quick", action="store_true", help=quick)
        p.add_argument("--repeat", type=int, help=f"runs per timing, best kept ({repeat}; quick 1)")
        p.add_argument("--at", metavar="REF", help="measure reconciler/ as committed at REF")
        p.add_argument("--write-results", action="store_true", help="replace its RESULTS.md part")
        self.args = argparse.Namespace()
        self.facts = self.version = self.command = ""

    def start(self, argv: Sequence[str] | None, *facts: str) -> argparse.Namespace:
        """Parse the options (--repeat filled in), take the machine's facts and a snapshot
        of reconciler/."""
        self.args = args = self.options.parse_args(argv)
        args.repeat = args.repeat or (1 if args.quick else self.default_repeat)
        if args.repeat < 1:
            self.options.error("--repeat must be at least 1")
        given = sys.argv[1:] if argv is None else argv
        self.command = shlex.join(["python3", f"bench/{self.name}.py", *given])
        self.facts, self.version = machine_facts(*facts), take_snapshot(self.name, args.at)
        self.log(f"measuring reconciler at {self.version}")
        return args

    def note(self, *facts: str) -> None:
        """Add to the machine's facts (what a benchmark learns once started: versions …)."""
        self.facts = ", ".join([self.facts, *facts])

    def header(self, summary: str = "") -> list[str]:
        """The start of the section: who wrote it, when, on what, what was measured, how
        (`summary`: sizes, runs per figure …); what the figures mean is in README.md."""
        took = ", ".join([f"{self.log.seconds:.0f} s in all", *filter(None, [summary])])
        now, name = dt.datetime.now(dt.UTC).isoformat(timespec="minutes"), self.name
        return [
            f"## {name}",
            "",
            f"<!-- Written by `bench/{name}.py --write-results`; a new run replaces this "
            "section. -->",
            "",
            f"Date: {now}. Machine: {self.facts}.",
            "",
            f"Measured: reconciler at {self.version}.",
            "",
            f"Command: `{self.command}` — {took}; load average at the end {loadavg()}. What is "
            f"measured and what the columns mean: README.md, `{name}.py`.",
            "",
        ]

    def publish(self, lines: Sequence[str]) -> int:
        """Print the report; with --write-results, also replace its section of RESULTS.md."""
        text = "\n".join(lines).rstrip("\n") + "\n"
        print(text, flush=True)
        if self.args.write_results:
            write_section(RESULTS_FILE, f"## {self.name}", text)
            self.log(f"wrote '## {self.name}' in {RESULTS_FILE}")
        return 0
