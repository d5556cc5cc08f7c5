#!/usr/bin/env python3
"""Benchmark `reconciler apply --copy-only` over real SSH (SPEC §3 steps 2-3).

Starts its own OpenSSH test hosts (tests.testhosts.TestHostNetwork: sshd in network
namespaces on a private bridge; needs root) and measures, in one run:

1. **upgrade** — 50 packages of ~200 KiB (text and random bytes) in the profile of 3
   machines; apply; change one package's src, commit, apply again. Bytes on the wire per
   machine for the upgrade, from apply's JSON (`wireBytes`, the tar stream) and from the
   kernel (tx/rx byte counters of the host's veth in the root namespace: everything, SSH
   handshake, queries and TCP/IP headers included). Goal: at most 1.1 × the changed
   paths' size + 64 KiB per machine. Compression auto (zstd) and none.
2. **fresh** — one 200 MB package (half random bytes, half text; and all random) to one
   host: apply's transfer time (JSON `seconds`) and wall time, against peers sending the
   same bytes in the same run: OpenSSH `cat > /dev/null` (the goal's peer; also with
   aes128-gcm), asyncssh `cat > /dev/null` in this process (the library reconciler uses;
   its default chacha20-poly1305 and aes128-gcm), OpenSSH `tar | ssh tar -x` and
   `tar | zstd | ssh 'zstd -d | tar -x'` (what reconciler does, with OpenSSH), `rsync -a`
   and, when Nix is installed, `nix-copy-closure`; an apply with nothing to send (the fixed
   cost); and one apply under cProfile (bench/out/transfer-profile.txt). Goal: throughput
   at least 80% of OpenSSH `cat`. Compression none and auto.
3. **fanout** — one 50 MB package (smaller than 200 MB to keep the run short) to 10 hosts
   vs 1 host: apply wall time, also with `--max-concurrent 2`. Goal: at most 2×. Also
   OpenSSH `cat` to 10 hosts at once vs 1, which shows what this machine allows, since the
   hosts share its cores.

CPU time is accounted per side: the reconciler process itself (Python: asyncssh, the event
loop), what it started (tar, zstd, git), and the hosts (sshd and everything the sessions
ran: decryption, tar -x, python3). Every timing is the best of --repeat runs; the methods
of a comparison run in rounds (each once per round), so they share the disturbances of a
noisy machine.

With --write-results the report replaces the `## transfer` section of bench/RESULTS.md.
Run `python3 bench/transfer.py -h` for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import json
import math
import os
import platform
import random
import re
import resource
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

from results import write_section  # noqa: E402  (beside this script)

from tests.testhosts import TestHost, TestHostNetwork  # noqa: E402

OUT_DIR = BENCH_DIR / "out"
SNAPSHOT_DIR = OUT_DIR / "transfer-snapshot"
RESULTS_FILE = BENCH_DIR / "RESULTS.md"
SECTION = "## transfer"

KIB = 1024
MB = 1_000_000
TICK = os.sysconf("SC_CLK_TCK")
REMOTE_STATE = "reconciler"  # the default stateDir /var/lib/reconciler, under host.var_lib
REMOTE_BENCH = "bench"  # /var/lib/bench: where the peers unpack
TAR = ["tar", "--sort=name", "--numeric-owner", "--owner=0", "--group=0"]  # as reconciler
ZSTD = ["zstd", "-q", "-c", "-T0", "-3"]  # as reconciler (targets/store.py)
AES_GCM = "aes128-gcm@openssh.com"

GOAL_UPGRADE_FACTOR = 1.1
GOAL_UPGRADE_SLACK = 64 * KIB
GOAL_THROUGHPUT = 0.8
GOAL_FANOUT = 2.0


@dataclass(frozen=True)
class Sizes:
    packages: int = 50
    package_bytes: int = 200 * KIB
    upgrade_hosts: int = 3
    fresh_bytes: int = 200 * MB
    fanout_bytes: int = 50 * MB
    fanout_hosts: int = 10
    repeat: int = 3


QUICK = Sizes(packages=10, fresh_bytes=20 * MB, fanout_bytes=5 * MB, repeat=1)


# --- measuring ---------------------------------------------------------------------------


@dataclass
class Measure:
    wall: float
    cpu_local: float = 0.0  # controller side: the processes started (or this process)
    cpu_python: float | None = None  # the reconciler process alone
    cpu_hosts: float | None = None  # every process of the hosts' ssh sessions
    result: dict[str, Any] = field(default_factory=dict)  # apply's JSON
    tx: dict[str, int] = field(default_factory=dict)  # machine/host → veth tx bytes
    rx: dict[str, int] = field(default_factory=dict)


def _proc_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # [0] is field 3 (state) of proc(5)


def _own_cpu(pid: int) -> float | None:
    """utime + stime of a process itself (not its children)."""
    f = _proc_fields(pid)
    return (int(f[11]) + int(f[12])) / TICK if f else None


class _CpuSampler(threading.Thread):
    """Samples a process's own CPU time until it exits: the last sample is its total."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.last = pid, 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            cpu = _own_cpu(self.pid)
            if cpu is not None:
                self.last = cpu
            self.done.wait(0.02)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Hosts:
    """The test hosts plus what the benchmark reads of them from the root namespace:
    veth byte counters and the CPU time the sshd listener collected from its sessions."""

    def __init__(self, net: TestHostNetwork) -> None:
        self.net = net

    @property
    def all(self) -> list[TestHost]:
        return self.net.hosts

    def veth(self, host: TestHost) -> str:
        return self.net._state(host).veth  # private, but the name is what we need

    def counters(self, hosts: Sequence[TestHost]) -> tuple[dict[str, int], dict[str, int]]:
        def read(host: TestHost, what: str) -> int:
            return int(Path(f"/sys/class/net/{self.veth(host)}/statistics/{what}").read_text())

        return (
            {h.name: read(h, "tx_bytes") for h in hosts},
            {h.name: read(h, "rx_bytes") for h in hosts},
        )

    def _listener(self, host: TestHost) -> int | None:
        try:
            return self.net._listener_pid(self.net._state(host))
        except (AttributeError, RuntimeError):
            return None

    def cpu(self, hosts: Sequence[TestHost]) -> float | None:
        """CPU seconds of every finished ssh session of the hosts (sshd, shells, tar, …),
        as collected by each sshd listener (cutime + cstime); waits for open sessions."""
        found = [self._listener(h) for h in hosts]
        listeners = [pid for pid in found if pid is not None]
        if len(listeners) < len(found):
            return None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            parents = set()
            for name in os.listdir("/proc"):
                if name.isdigit() and (f := _proc_fields(int(name))):
                    parents.add(int(f[1]))
            if not parents & set(listeners):
                break
            time.sleep(0.02)
        total = 0.0
        for pid in listeners:
            f = _proc_fields(pid)
            if f is None:
                return None
            total += (int(f[13]) + int(f[14])) / TICK
        return total

    def reset(self, hosts: Sequence[TestHost]) -> None:
        """Empty the hosts' reconciler state (store included) and the peers' folder."""
        for h in hosts:
            for sub in (REMOTE_STATE, REMOTE_BENCH):
                shutil.rmtree(h.var_lib / sub, ignore_errors=True)
        os.sync()  # nothing left to write back that a timed run would pay for

    def measure(
        self, hosts: Sequence[TestHost], run: Callable[[], Measure], bytes_too: bool = False
    ) -> Measure:
        """Run one timed thing; add the hosts' CPU (and, with bytes_too, veth counters)."""
        cpu0 = self.cpu(hosts)
        tx0, rx0 = self.counters(hosts) if bytes_too else ({}, {})
        m = run()
        cpu1 = self.cpu(hosts)
        if bytes_too:
            tx1, rx1 = self.counters(hosts)
            m.tx = {k: tx1[k] - tx0[k] for k in tx1}
            m.rx = {k: rx1[k] - rx0[k] for k in rx1}
        if cpu0 is not None and cpu1 is not None:
            m.cpu_hosts = cpu1 - cpu0
        return m


def timed(
    argv: Sequence[str], stdin: Path | None = None, env: dict[str, str] | None = None
) -> Measure:
    """Wall and CPU time of a command; fails loudly on a non-zero exit."""
    cpu0 = _children_cpu()
    with open(stdin or os.devnull, "rb") as f:
        t0 = time.perf_counter()
        done = subprocess.run(argv, stdin=f, capture_output=True, env=env, check=False)
        wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(argv)[:300]} exited {done.returncode}: "
            f"{done.stderr.decode(errors='replace')[-2000:]}"
        )
    return Measure(wall, cpu_local=_children_cpu() - cpu0)


def timed_parallel(argvs: Sequence[Sequence[str]], stdin: Path) -> Measure:
    """Start every command at once (each reading `stdin`); time until all have ended."""
    cpu0 = _children_cpu()
    files = [open(stdin, "rb") for _ in argvs]  # noqa: SIM115
    try:
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(a, stdin=f, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for a, f in zip(argvs, files, strict=True)
        ]
        errors = [p.communicate()[1] for p in procs]
        wall = time.perf_counter() - t0
    finally:
        for f in files:
            f.close()
    for p, err in zip(procs, errors, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"{p.args!r} exited {p.returncode}: {err.decode()[-2000:]}")
    return Measure(wall, cpu_local=_children_cpu() - cpu0)


def best(runs: Sequence[Measure]) -> Measure:
    return min(runs, key=lambda m: m.wall)


# --- the reconciler under test -----------------------------------------------------------


def package_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("reconciler")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("reconciler is not installed in this interpreter")
    return Path(next(iter(spec.submodule_search_locations)))


def take_snapshot() -> str:
    """Copy reconciler/ as it is now, so that edits made during the run cannot mix two
    versions into one table (children import the copy); returns what was measured."""
    src = package_dir()
    shutil.rmtree(SNAPSHOT_DIR, ignore_errors=True)
    SNAPSHOT_DIR.mkdir(parents=True)
    shutil.copytree(src, SNAPSHOT_DIR / "reconciler", ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha256()
    pkg = SNAPSHOT_DIR / "reconciler"
    for path in sorted(pkg.rglob("*.py")):
        digest.update(path.relative_to(pkg).as_posix().encode() + b"\0" + path.read_bytes())

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=src, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    where = f"commit {git('rev-parse', '--short=12', 'HEAD')}"
    if git("status", "--porcelain", "--", "."):
        where += " + uncommitted changes in reconciler/"
    return f"{where} (snapshot, sources sha256 {digest.hexdigest()[:12]})"


def reconciler_cmd() -> list[str]:
    """The console script beside this interpreter (not a pyenv shim), else `-m reconciler`."""
    script = Path(sys.executable).parent / "reconciler"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "reconciler"]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "RECONCILER_"))}
    if env.pop("PYTHONDONTWRITEBYTECODE", None):
        env.setdefault("PYTHONPYCACHEPREFIX", str(OUT_DIR / "pycache"))
    if SNAPSHOT_DIR.exists():
        env["PYTHONPATH"] = os.pathsep.join(
            [str(SNAPSHOT_DIR), *filter(None, [env.get("PYTHONPATH")])]
        )
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


@dataclass(frozen=True)
class Models:
    repo: Path
    state: Path  # the state DB; the local store cache is beside it

    def apply_args(
        self, deployment: str, ref: str | None = None, concurrent: int | None = None
    ) -> list[str]:
        return [
            "--repo", str(self.repo), "--state", str(self.state), "-d", deployment,
            *(["--ref", ref] if ref else []),
            "apply", "--copy-only", "--yes", "--format", "json",
            *(["--max-concurrent", str(concurrent)] if concurrent else []),
        ]  # fmt: skip

    def apply(
        self, deployment: str, ref: str | None = None, concurrent: int | None = None
    ) -> Measure:
        """`reconciler … apply --copy-only --format json`: wall time, its JSON, the CPU of
        the Python process itself and of everything it started."""
        cmd = [*reconciler_cmd(), *self.apply_args(deployment, ref, concurrent)]
        cpu0 = _children_cpu()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=child_env()
            )
            sampler = _CpuSampler(proc.pid)
            sampler.start()
            code = proc.wait()
            wall = time.perf_counter() - t0
            sampler.done.set()
            sampler.join()
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
        if code != 0:
            raise RuntimeError(f"{shlex.join(cmd)} exited {code}:\n{stderr[-3000:]}")
        total = _children_cpu() - cpu0
        return Measure(
            wall, cpu_local=total, cpu_python=min(sampler.last, total), result=json.loads(stdout)
        )


# --- generated content and models repositories ------------------------------------------

_CORPUS: list[bytes] = []


def corpus() -> bytes:
    """Real text: Python's standard library sources (about 30 MB), concatenated."""
    if not _CORPUS:
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        parts, size = [], 0
        for path in sorted(stdlib.rglob("*.py")):
            if "site-packages" in path.parts or size > 32 * MB:
                continue
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                parts.append(data)
                size += len(data)
        text = b"".join(parts)
        if len(text) < MB:  # no sources installed: words, still compressible
            rng = random.Random(7)
            words = [
                bytes(rng.choices(b"etaoinshrdlucmfw", k=rng.randint(2, 9))) for _ in range(2000)
            ]
            text = b"".join(
                w + (b"\n" if i % 12 == 11 else b" ")
                for i, w in enumerate(rng.choices(words, k=400_000))
            )
        _CORPUS.append(text)
    return _CORPUS[0]


class Content:
    """Deterministic file contents: text slices of the corpus and random bytes."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def text(self, n: int) -> bytes:
        text = corpus()
        start = self.rng.randrange(len(text))
        out = text[start : start + n]
        while len(out) < n:
            out += text[: n - len(out)]
        return out

    def random(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def tree(self, root: Path, total: int, random_share: float) -> int:
        """Files of log-uniform sizes (4 KiB to min(8 MiB, total/8)) adding up to `total`:
        text under lib/ and share/, random bytes under bin/ and data/. Returns the files."""
        biggest = max(8 * KIB, min(8 * 1024 * KIB, total // 8))
        files = 0
        rand_total = int(total * random_share)
        for kind, target in (("text", total - rand_total), ("random", rand_total)):
            written = 0
            while written < target:
                n = int(math.exp(self.rng.uniform(math.log(4 * KIB), math.log(biggest))))
                n = min(n, target - written)
                if kind == "text":
                    path = root / ("lib" if files % 3 else "share/doc") / f"mod{files:04d}.py"
                    data = self.text(n)
                else:
                    path = root / ("bin" if files % 4 == 0 else "data") / f"blob{files:04d}"
                    data = self.random(n)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                written += n
                files += 1
        return files


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, env=child_env(), capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def new_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    # the models repository is set-up, not measured: store objects uncompressed
    git(path, "config", "core.compression", "0")
    git(path, "config", "gc.auto", "0")
    return path


def machine(host: TestHost, packages: Sequence[str], compression: str) -> dict[str, Any]:
    return {
        "packages": list(packages),
        "deployment": {
            "targetEnv": "ssh",
            "compression": compression,
            "ssh": {
                "host": host.address,
                "identityFile": str(host.identity_file),
                "hostKey": host.host_key,
            },
        },
    }


def write_models(
    repo: Path,
    packages: dict[str, dict[str, Any]],
    deployments: dict[str, dict[str, dict[str, Any]]],
) -> None:
    """reconciler.yaml plus packages.yaml and one machines file per deployment (JSON, which
    is YAML)."""
    (repo / "packages.yaml").write_text(json.dumps({"packages": packages}, indent=1))
    config: dict[str, Any] = {"deployments": {}}
    for name, machines in deployments.items():
        (repo / f"{name}.yaml").write_text(json.dumps({"machines": machines}, indent=1))
        config["deployments"][name] = {"models": ["packages.yaml", f"{name}.yaml"]}
    (repo / "reconciler.yaml").write_text(json.dumps(config, indent=1))


def transfer_of(m: Measure, machine_name: str) -> dict[str, Any]:
    result: dict[str, Any] = m.result["transfers"][machine_name]
    return result


def members(paths: Sequence[str]) -> list[str]:
    """What reconciler's tar stream holds for these store paths: each and its meta file."""
    return [m for p in paths for m in (p, f".meta/{p}.json")]


def remove_paths(host: TestHost, paths: Sequence[str]) -> None:
    store = host.var_lib / REMOTE_STATE / "store"
    for p in paths:
        shutil.rmtree(store / p, ignore_errors=True)
        (store / ".meta" / f"{p}.json").unlink(missing_ok=True)


# --- 1. upgrade: bytes on the wire --------------------------------------------------------


@dataclass
class UpgradeRow:
    compression: str  # the model's setting
    machine: str
    used: str  # what apply chose
    paths: int
    size: int
    wire: int  # apply's wireBytes
    tx: int  # veth, towards the host
    rx: int  # veth, from the host
    seconds: float

    @property
    def limit(self) -> float:
        return GOAL_UPGRADE_FACTOR * self.size + GOAL_UPGRADE_SLACK


@dataclass
class Upgrade:
    rows: list[UpgradeRow]
    full: dict[str, UpgradeRow]  # compression → the first, full transfer (first machine)
    changed_package: str
    package_size: int
    total_files: int
    packages: int


def run_upgrade(hosts: Hosts, work: Path, sizes: Sizes, log: Callable[[str], None]) -> Upgrade:
    targets = hosts.all[: sizes.upgrade_hosts]
    repo = new_repo(work / "upgrade")
    content = Content(1)
    names = [f"p{i:02d}" for i in range(sizes.packages)]
    files = sum(content.tree(repo / "src" / n, sizes.package_bytes, 0.3) for n in names)
    packages = {n: {"src": f"src/{n}"} for n in names}
    deployments = {
        f"up-{c}": {f"h{i}": machine(h, names, c) for i, h in enumerate(targets)}
        for c in ("auto", "none")
    }
    write_models(repo, packages, deployments)
    base = commit(repo, "50 packages")
    changed = names[len(names) // 2]
    first = sorted((repo / "src" / changed / "lib").glob("*.py"))[0]
    first.write_bytes(first.read_bytes() + b"\n# upgraded: one line more\n")
    upgraded = commit(repo, f"change {changed}")
    models = Models(repo, work / "state-upgrade" / "state.db")
    rows: list[UpgradeRow] = []
    full: dict[str, UpgradeRow] = {}

    def row(comp: str, m: Measure, name: str, host: TestHost) -> UpgradeRow:
        t = transfer_of(m, name)
        return UpgradeRow(
            comp, name, t["compression"], len(t["sent"]), t["size"], t["wireBytes"],
            m.tx[host.name], m.rx[host.name], t["seconds"],
        )  # fmt: skip

    for comp in ("auto", "none"):
        hosts.reset(targets)
        dep = f"up-{comp}"
        m = hosts.measure(targets, functools.partial(models.apply, dep, base), bytes_too=True)
        full[comp] = row(comp, m, "h0", targets[0])
        log(f"upgrade/{comp}: first apply {m.wall:.2f} s, {full[comp].paths} paths")
        worst: dict[str, UpgradeRow] = {}
        sent: dict[str, list[str]] = {}
        for _ in range(sizes.repeat):
            for i, h in enumerate(targets):  # again: remove what the last upgrade sent
                remove_paths(h, sent.get(f"h{i}", []))
            again = functools.partial(models.apply, dep, upgraded)
            m = hosts.measure(targets, again, bytes_too=True)
            for i, h in enumerate(targets):
                this = row(comp, m, f"h{i}", h)
                sent[this.machine] = transfer_of(m, this.machine)["sent"]
                if this.machine not in worst or this.tx > worst[this.machine].tx:
                    worst[this.machine] = this
            log(f"upgrade/{comp}: upgrade apply {m.wall:.2f} s, tx {sorted(m.tx.values())}")
        rows += [worst[k] for k in sorted(worst)]
    return Upgrade(rows, full, changed, sizes.package_bytes, files, len(names))


# --- 2. fresh closure: throughput ---------------------------------------------------------


@dataclass
class Method:
    name: str
    runs: list[Measure] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # transfer time (JSON) if not wall
    wire: int | None = None
    note: str = ""
    payload: bool = True  # False: nothing to send, the fixed cost

    @property
    def best_seconds(self) -> float:
        return min(self.seconds) if self.seconds else best(self.runs).wall

    @property
    def best_wall(self) -> float:
        return best(self.runs).wall

    @property
    def worst_seconds(self) -> float:
        return max(self.seconds) if self.seconds else max(m.wall for m in self.runs)


@dataclass
class Case:
    """One method of a comparison: prepare (untimed), then run (timed)."""

    method: Method
    prepare: Callable[[], object]
    run: Callable[[], Measure]
    apply_json: bool = False  # run is a reconciler apply: take its machine's seconds

    def __str__(self) -> str:
        m = self.method
        return f"{m.name}: best {m.best_seconds:.2f} s, wall {m.best_wall:.2f} s"


def run_rounds(
    hosts: Hosts,
    group: Sequence[TestHost],
    cases: Sequence[Case],
    repeat: int,
    log: Callable[[Case], None],
) -> None:
    """`repeat` rounds, each running every case once: on a noisy machine, methods compared
    with each other then see the same disturbances, and each keeps its best."""
    for _ in range(repeat):
        for case in cases:
            case.prepare()
            m = hosts.measure(group, case.run, bytes_too=True)
            case.method.runs.append(m)
            if case.apply_json:
                case.method.seconds.append(
                    max(t["seconds"] for t in m.result["transfers"].values())
                )
    for case in cases:
        log(case)


@dataclass
class Fresh:
    content: str  # "mixed" or "random"
    size: int  # unpacked bytes of the store path
    files: int
    tar_bytes: int
    zstd_bytes: int
    first_apply: float  # building included
    build_seconds: float  # first apply wall − its transfer seconds
    methods: list[Method]
    nix_add: float | None = None
    others: list[str] = field(default_factory=list)  # sent besides the package
    profile: list[str] = field(default_factory=list)  # summary of a profiled apply

    def method(self, name: str) -> Method:
        return next(m for m in self.methods if m.name == name)


async def _asyncssh_cat(host: TestHost, data: Path, cipher: str | None) -> float:
    """What reconciler's SshTarget does, minus reconciler: connect, one channel, stream
    256 KiB chunks with drain(), wait for the exit status."""
    import asyncssh

    t0 = time.perf_counter()
    conn = await asyncssh.connect(
        host.address,
        host.port,
        username=host.user,
        client_keys=[str(host.identity_file)],
        agent_path=None,
        known_hosts=None,
        **({"encryption_algs": [cipher]} if cipher else {}),
    )
    try:
        proc = await conn.create_process("cat > /dev/null", encoding=None)
        with open(data, "rb") as f:
            while chunk := f.read(256 * KIB):
                proc.stdin.write(chunk)
                await proc.stdin.drain()
        proc.stdin.write_eof()
        done = await proc.wait()
        if done.exit_status != 0:
            raise RuntimeError(f"asyncssh cat: exit {done.exit_status}")
    finally:
        conn.close()
        await conn.wait_closed()
    return time.perf_counter() - t0


def asyncssh_cat(host: TestHost, data: Path, cipher: str | None = None) -> Measure:
    cpu0 = time.process_time()
    wall = asyncio.run(_asyncssh_cat(host, data, cipher))
    cpu = time.process_time() - cpu0
    return Measure(wall, cpu_local=cpu, cpu_python=cpu)


def ciphers(host: TestHost) -> str:
    """The ciphers OpenSSH and asyncssh negotiate with the test hosts' sshd."""
    out = subprocess.run(
        [*host.ssh_command()[:-1], "-v", host.ssh_command()[-1], "true"],
        capture_output=True, text=True, check=False,
    ).stderr  # fmt: skip
    openssh = next(
        (
            ln.split("cipher:")[1].split()[0]
            for ln in out.splitlines()
            if "client->server cipher" in ln
        ),
        "?",
    )

    async def probe() -> str:
        import asyncssh

        async with asyncssh.connect(
            host.address, username=host.user, client_keys=[str(host.identity_file)],
            agent_path=None, known_hosts=None,
        ) as conn:  # fmt: skip
            return str(conn.get_extra_info("send_cipher"))

    return f"OpenSSH {openssh}, asyncssh {asyncio.run(probe())}"


class Nix:
    """nix-store --add into a private chroot store (the real /nix/store is the test hosts'
    store too: /nix is shared with them), nix-copy-closure from it to the host."""

    def __init__(self, work: Path) -> None:
        self.root = work / "nix-root"
        self.added: list[str] = []
        self.problem = ""
        if not (shutil.which("nix-store") and shutil.which("nix-copy-closure")):
            self.problem = "nix-store/nix-copy-closure not installed"

    def add(self, tree: Path) -> tuple[str, float]:
        t0 = time.perf_counter()
        done = subprocess.run(
            ["nix-store", "--store", str(self.root), "--add", str(tree)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"nix-store --add: {done.stderr.strip()[-1000:]}")
        path = done.stdout.strip()
        self.added.append(path)
        return path, time.perf_counter() - t0

    def forget_remote(self, path: str) -> None:
        """Delete the path from the hosts' (the machine's) /nix/store, if it is there."""
        subprocess.run(["nix-store", "--delete", path], capture_output=True, check=False)

    def copy(self, host: TestHost, path: str) -> Measure:
        env = dict(os.environ, NIX_SSHOPTS=" ".join(host.ssh_command()[1:-1]))
        argv = ["nix-copy-closure", "--store", str(self.root), "--to",
                f"{host.user}@{host.address}", path]  # fmt: skip
        return timed(argv, env=env)

    def cleanup(self) -> None:
        for path in self.added:
            self.forget_remote(path)


PROFILE_CODE = r"""
import cProfile, sys
from reconciler.cli import main
prof = cProfile.Profile()
code = 0
try:
    prof.runcall(main, sys.argv[2:])
except SystemExit as exc:
    code = exc.code
prof.dump_stats(sys.argv[1])
sys.exit(code)
"""


def _profile_group(file: str, func: str) -> str:
    if file == "~":  # C: builtins, extension methods
        return "C functions called from Python (copies, crypto, I/O)"
    for part in ("asyncssh", "asyncio", "reconciler", "cryptography", "typer", "rich"):
        if f"/{part}/" in file:
            return part
    return "site-packages, other" if "site-packages" in file else "stdlib, other"


def profile_apply(models: Models, deployment: str) -> list[str]:
    """One apply under cProfile (bench/out/transfer.prof, transfer-profile.txt): own time
    by package and the top functions."""
    import pstats

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    raw, text = OUT_DIR / "transfer.prof", OUT_DIR / "transfer-profile.txt"
    cmd = [sys.executable, "-c", PROFILE_CODE, str(raw), *models.apply_args(deployment)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, env=child_env(), check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        return [f"profiled apply failed: {done.stderr.decode(errors='replace')[-500:]}"]
    stats = pstats.Stats(str(raw))
    entries: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(e[2] for e in entries.values())
    groups: dict[str, float] = {}
    for (file, _, func), e in entries.items():
        g = _profile_group(file, func)
        groups[g] = groups.get(g, 0.0) + e[2]
    top = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:8]
    with text.open("w") as out:
        out.write(f"reconciler {shlex.join(models.apply_args(deployment))}\n\n")
        for key in ("tottime", "cumulative"):
            pstats.Stats(str(raw), stream=out).sort_stats(key).print_stats(40)
    lines = [
        f"Profiled: one apply (compression none) under cProfile, {wall:.2f} s wall, "
        f"{total:.2f} s of profiled own time — by package: "
        + ", ".join(
            f"{g} {t:.2f} s ({t / total:.0%})"
            for g, t in sorted(groups.items(), key=lambda kv: kv[1], reverse=True)[:6]
        )
        + f". Top functions by own time (`{text.relative_to(ROOT)}`, git-ignored, has more):",
        "",
    ]
    for (file, line, func), e in top:
        where = "C" if file == "~" else f"{'/'.join(Path(file).parts[-2:])}:{line}"
        lines.append(f"- `{func}` ({where}): {e[2]:.2f} s own, {e[1]:,} calls")
    return lines


def run_fresh(
    hosts: Hosts, work: Path, sizes: Sizes, nix: Nix, log: Callable[[str], None], profile: bool
) -> list[Fresh]:
    host = hosts.all[0]
    repo = new_repo(work / "fresh")
    files: dict[str, int] = {}
    for i, (name, share) in enumerate((("mixed", 0.5), ("random", 1.0))):
        files[name] = Content(10 + i).tree(repo / "src" / name, sizes.fresh_bytes, share)
    packages = {n: {"src": f"src/{n}"} for n in files}
    deployments = {
        f"{n}-{c}": {"m": machine(host, [n], c)} for n in files for c in ("auto", "none")
    }
    write_models(repo, packages, deployments)
    commit(repo, "one big package each")
    models = Models(repo, work / "state-fresh" / "state.db")
    return [
        fresh_one(hosts, models, work, n, files[n], sizes, nix, log, profile and n == "mixed")
        for n in files
    ]


def fresh_one(
    hosts: Hosts,
    models: Models,
    work: Path,
    name: str,
    files: int,
    sizes: Sizes,
    nix: Nix,
    log: Callable[[str], None],
    profile: bool,
) -> Fresh:
    host = hosts.all[0]
    store = models.state.parent / "store"
    hosts.reset([host])
    first = models.apply(f"{name}-auto")
    t = transfer_of(first, "m")
    sent: list[str] = t["sent"]  # the package, and whatever else a new machine gets
    path = next(p for p in sent if p.endswith(f"-{name}"))
    others = [p for p in sent if p != path]
    log(f"fresh/{name}: first apply (building) {first.wall:.2f} s, sent {sent}")
    tar = work / f"{name}.tar"
    subprocess.run([*TAR, "-C", str(store), "-cf", str(tar), "--", *members(sent)], check=True)
    zst = work / f"{name}.tar.zst"
    with open(tar, "rb") as i, open(zst, "wb") as o:
        subprocess.run(ZSTD, stdin=i, stdout=o, check=True)
    f = Fresh(
        name, t["size"], files, tar.stat().st_size, zst.stat().st_size,
        first.wall, first.wall - t["seconds"], [], others=others,
    )  # fmt: skip
    ssh = host.ssh_command()
    gcm = [*ssh[:-1], "-c", AES_GCM, ssh[-1]]
    into = f"/var/lib/{REMOTE_BENCH}"
    pack = shlex.join([*TAR, "-C", str(store), "-cf", "-", "--", *members(sent)])
    unpack = f"mkdir -p {into} && tar -x -f - -C {into}"
    unzstd = f"mkdir -p {into} && zstd -q -d -c | tar -x -f - -C {into}"
    rsync = [
        "rsync", "-a", "-e", shlex.join(ssh[:-1]), *(str(store / p) for p in sent),
        f"{host.user}@{host.address}:{into}/",
    ]  # fmt: skip

    def pipeline(*stages: str) -> Measure:
        return timed(["bash", "-o", "pipefail", "-c", " | ".join(stages)])

    peers: list[tuple[str, Callable[[], Measure], str]] = [
        (
            "OpenSSH: cat > /dev/null",
            lambda: timed([*ssh, "cat > /dev/null"], tar),
            "the goal's peer",
        ),
        (
            f"OpenSSH -c {AES_GCM}: cat > /dev/null",
            lambda: timed([*gcm, "cat > /dev/null"], tar),
            "",
        ),
        ("asyncssh: cat > /dev/null", lambda: asyncssh_cat(host, tar), "in this process"),
        (
            f"asyncssh, {AES_GCM}: cat > /dev/null",
            lambda: asyncssh_cat(host, tar, AES_GCM),
            "in this process",
        ),
        (
            "OpenSSH: tar | ssh tar -x",
            lambda: pipeline(pack, shlex.join([*ssh, unpack])),
            "what reconciler none does, with OpenSSH",
        ),
        (
            "OpenSSH: tar | zstd | ssh 'zstd -d | tar -x'",
            lambda: pipeline(pack, shlex.join(ZSTD), shlex.join([*ssh, unzstd])),
            "what reconciler zstd does, with OpenSSH",
        ),
        ("rsync -a", lambda: timed(rsync), ""),
    ]
    reset = functools.partial(hosts.reset, [host])
    cases: list[Case] = []
    for comp in ("none", "auto"):
        apply = functools.partial(models.apply, f"{name}-{comp}")
        cases.append(Case(Method(f"reconciler, compression {comp}"), reset, apply, True))
        if comp == "none":  # right after it, the path is there: nothing to send
            nothing = Method(
                "reconciler, nothing to send",
                note="the fixed cost: start-up, plan, connect, store query",
                payload=False,
            )
            cases.append(Case(nothing, lambda: None, apply, True))
    cases += [Case(Method(label, note=note), reset, run) for label, run, note in peers]
    if not nix.problem:
        try:
            nix_path, f.nix_add = nix.add(store / path)
            cases.append(
                Case(
                    Method("nix-copy-closure", note=f"nix-store --add took {f.nix_add:.2f} s"),
                    functools.partial(nix.forget_remote, nix_path),
                    functools.partial(nix.copy, host, nix_path),
                )
            )
        except RuntimeError as exc:
            nix.problem = str(exc)
            log(f"fresh/{name}: nix: {exc}")
    run_rounds(hosts, [host], cases, sizes.repeat, lambda c: log(f"fresh/{name}: {c}"))
    methods = [c.method for c in cases]
    for meth in methods:
        if meth.name.startswith("reconciler, compression"):
            t = transfer_of(best(meth.runs), "m")
            meth.wire = t["wireBytes"]
            meth.note = f"used {t['compression']}"
    if not nix.problem:
        nix.forget_remote(nix_path)
    f.methods = methods
    if profile:
        hosts.reset([host])
        f.profile = profile_apply(models, f"{name}-none")
        log(f"fresh/{name}: profiled apply done")
    hosts.reset([host])
    tar.unlink()
    zst.unlink()
    return f


# --- 3. fan-out ---------------------------------------------------------------------------


@dataclass
class FanoutRow:
    what: str
    group: str  # rows of a group compare with its 1-host row
    hosts: int
    wall: float
    transfer: float | None  # the slowest machine's JSON seconds
    python: float | None
    local: float
    remote: float | None

    @property
    def is_reconciler(self) -> bool:
        return self.what.startswith("reconciler")


@dataclass
class Fanout:
    size: int
    rows: list[FanoutRow]

    def baseline(self, row: FanoutRow) -> FanoutRow:
        return next(r for r in self.rows if r.group == row.group and r.hosts == 1)

    def many(self) -> list[FanoutRow]:
        return [r for r in self.rows if r.hosts > 1]


def run_fanout(hosts: Hosts, work: Path, sizes: Sizes, log: Callable[[str], None]) -> Fanout:
    targets = hosts.all[: sizes.fanout_hosts]
    repo = new_repo(work / "fanout")
    Content(20).tree(repo / "src" / "app", sizes.fanout_bytes, 0.5)
    deployments: dict[str, dict[str, dict[str, Any]]] = {}
    for c in ("auto", "none"):
        deployments[f"one-{c}"] = {"f0": machine(targets[0], ["app"], c)}
        deployments[f"all-{c}"] = {f"f{i}": machine(h, ["app"], c) for i, h in enumerate(targets)}
    write_models(repo, {"app": {"src": "src/app"}}, deployments)
    commit(repo, "one package, many machines")
    models = Models(repo, work / "state-fanout" / "state.db")
    hosts.reset(targets)
    first = models.apply("one-auto")  # builds
    size = transfer_of(first, "f0")["size"]
    sent = transfer_of(first, "f0")["sent"]
    tar = work / "fanout.tar"
    store = models.state.parent / "store"
    subprocess.run([*TAR, "-C", str(store), "-cf", str(tar), "--", *members(sent)], check=True)
    reset = functools.partial(hosts.reset, targets)
    cases: list[tuple[Case, str, int]] = []
    for comp, concurrent in (("auto", None), ("none", None), ("none", 2)):
        what = f"reconciler, compression {comp}"
        label = f"{what}, --max-concurrent {concurrent}" if concurrent else what
        for dep, n in ((f"one-{comp}", 1), (f"all-{comp}", len(targets))):
            if concurrent and n == 1:
                continue  # the same as without
            run = functools.partial(models.apply, dep, None, concurrent)
            cases.append((Case(Method(label), reset, run, apply_json=True), what, n))
    for n in (1, len(targets)):
        argvs = [[*h.ssh_command(), "cat > /dev/null"] for h in targets[:n]]
        run = functools.partial(timed_parallel, argvs, tar)
        cases.append((Case(Method("OpenSSH: cat > /dev/null"), reset, run), "ssh", n))
    run_rounds(
        hosts, targets, [c for c, _, _ in cases], sizes.repeat, lambda c: log(f"fanout: {c}")
    )
    rows: list[FanoutRow] = []
    for case, group, n in cases:
        m, b = case.method, best(case.method.runs)
        transfer = m.best_seconds if case.apply_json else None
        rows.append(
            FanoutRow(m.name, group, n, b.wall, transfer, b.cpu_python, b.cpu_local, b.cpu_hosts)
        )
    tar.unlink()
    hosts.reset(targets)
    return Fanout(size, rows)


# --- report -------------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / MB:,.1f}"


def kib(n: float) -> str:
    return f"{n / KIB:,.1f}"


def secs(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def cell(text: str) -> str:
    """Text for a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def tool_version(label: str, argv: Sequence[str]) -> str:
    """'label 1.2.3' from a tool's version output; 'label: not installed' without it."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError:
        return f"{label}: not installed"
    text = (done.stdout or done.stderr).strip()
    if label == "OpenSSH":
        return text.split(",")[0].replace("_", " ", 1)
    found = re.search(r"\d+\.\d+[\w.+-]*", text)
    return f"{label} {found.group(0) if found else '?'}"


def machine_facts(load: str) -> list[str]:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import asyncssh

    return [
        f"nproc {len(os.sched_getaffinity(0))} ({cpu}), load average {load} at the start, "
        f"{platform.system()} {platform.release()}",
        f"Python {platform.python_version()}, asyncssh {asyncssh.__version__}, "
        f"{tool_version('OpenSSH', ['ssh', '-V'])}, {tool_version('zstd', ['zstd', '-V'])}, "
        f"{tool_version('rsync', ['rsync', '--version'])}, "
        f"{tool_version('Nix', ['nix-store', '--version'])}",
    ]


def upgrade_section(up: Upgrade) -> list[str]:
    n = up.packages
    lines = [
        f"### 1. Upgrade after changing one of {n} packages",
        "",
        f"{n} packages of ~{up.package_size // KIB} KiB (30% random bytes, the rest text; "
        f"{up.total_files} files in all) in the profile of {len(up.rows) // 2} machines. "
        f"One line appended to one file of package `{up.changed_package}`; its new store "
        "path is sent whole (no deltas). *apply wire* is apply's `wireBytes` (the tar "
        "stream, compressed or not); *veth tx/rx* are the kernel's byte counters of the "
        "host's veth in the root namespace around the upgrade apply (towards / from the "
        "host: SSH handshake, store query, commands, tar stream, TCP/IP headers — with GSO, "
        "one set of headers per segment batch). The worst of the runs per machine.",
        "",
        "| compression | machine | used | paths sent | changed size KiB | apply wire KiB "
        "| veth tx KiB | veth rx KiB | limit KiB | tx / limit | tx − wire KiB | goal |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in up.rows:
        lines.append(
            f"| {r.compression} | {r.machine} | {r.used} | {r.paths} | {kib(r.size)} | "
            f"{kib(r.wire)} | {kib(r.tx)} | {kib(r.rx)} | {kib(r.limit)} | "
            f"{r.tx / r.limit:.2f} | {kib(r.tx - r.wire)} | {verdict(r.tx <= r.limit)} |"
        )
    lines.append("")
    for comp, r in up.full.items():
        lines.append(
            f"- First, full transfer (compression {comp}, {r.machine}): {r.paths} paths "
            f"({n} packages{' and reconciler’s own' if r.paths > n else ''}), "
            f"{kib(r.size)} KiB unpacked, apply wire {kib(r.wire)} KiB ({r.used}), veth tx "
            f"{kib(r.tx)} KiB, rx {kib(r.rx)} KiB, {r.seconds:.2f} s."
        )
    return lines


def fresh_section(results: list[Fresh], nix: Nix) -> list[str]:
    lines = ["### 2. Fresh closure to 1 host", ""]
    for f in results:
        cat = f.method("OpenSSH: cat > /dev/null").best_wall
        kind = "half random bytes, half text" if f.content == "mixed" else "all random bytes"
        lines += [
            f"**{f.content}** ({kind}): "
            f"one store path of {mb(f.size)} MB in {f.files} files; the same bytes as a tar "
            f"stream: {mb(f.tar_bytes)} MB, zstd -3: {mb(f.zstd_bytes)} MB "
            f"({f.zstd_bytes / f.tar_bytes:.0%}). First apply (building from Git included): "
            f"{f.first_apply:.2f} s, of which about {f.build_seconds:.2f} s before the "
            "transfer.",
            "",
            "| method | transfer s | slowest run s | MB/s | vs OpenSSH cat | wall s "
            "| apply wire MB | veth tx MB | CPU s: Python | CPU s: local children | CPU s: host "
            "| note |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for m in f.methods:
            b = best(m.runs)
            t = m.best_seconds
            py = "–" if b.cpu_python is None else f"{b.cpu_python:.2f}"
            children = b.cpu_local - (b.cpu_python or 0.0)
            speed, ratio = (
                (f"{f.size / t / MB:,.0f}", f"{cat / t:.0%}") if m.payload else ("–",) * 2
            )
            lines.append(
                f"| {cell(m.name)} | {t:.2f} | {m.worst_seconds:.2f} | {speed} | {ratio} | "
                f"{m.best_wall:.2f} | {mb(m.wire) if m.wire else '–'} | "
                f"{mb(sum(b.tx.values())) if b.tx else '–'} | {py} | "
                f"{children:.2f} | {secs(b.cpu_hosts)} | {cell(m.note)} |"
            )
        lines += ["", *fresh_analysis(f), ""]
        if f.profile:
            lines += [*f.profile, ""]
    lines += [
        "*transfer s*: for reconciler the machine's `seconds` in apply's JSON (connect, store "
        "query, stream, unpack, finalize), for the others the wall time of the command "
        "(connection included). *wall s*: the whole command; for reconciler that adds "
        "start-up, loading and planning the models and checking the local store cache. "
        "MB/s = the store path's unpacked size / transfer s. CPU: *Python* the reconciler "
        "process itself, *local children* what it (or the command) started (tar, zstd, ssh), "
        "*host* every process of the host's ssh sessions (sshd, tar -x, python3). Best of the "
        "runs by time (*slowest run*: the worst, to show the noise); CPU from the best run. "
        "Methods run in rounds (each once per round), so they share the machine's "
        "disturbances.",
        "",
    ]
    others = sorted({p for f in results for p in f.others})
    if others:
        lines += [
            f"A new machine also gets {', '.join(f'`{p}`' for p in others)} besides the "
            "package (it is in apply's `sent`, and in the sizes above): tar and rsync send it "
            "too, nix-copy-closure sends the package alone.",
            "",
        ]
    if nix.problem:
        lines += [f"Nix: not measured — {' '.join(nix.problem.split())}", ""]
    else:
        lines += [
            "Nix: `nix-store --store <tmp>/nix-root --add <store path>` (a private chroot "
            "store: /nix is shared with the test hosts, so the machine's own /nix/store is "
            "the *remote* store), then `NIX_SSHOPTS=<ssh options> nix-copy-closure --store "
            "<tmp>/nix-root --to root@<host> <path>` (the host runs `nix-store --serve "
            "--write` on the shared /nix/store; the path is deleted there before each run).",
            "",
        ]
    return lines


def nproc() -> int:
    return len(os.sched_getaffinity(0))


def cpu_total(m: Measure) -> float:
    return m.cpu_local + (m.cpu_hosts or 0.0)


def fresh_analysis(f: Fresh) -> list[str]:
    """Where the time goes, from this run's numbers."""
    size = f.size / MB
    none, auto = (f.method(f"reconciler, compression {c}") for c in ("none", "auto"))
    nothing = f.method("reconciler, nothing to send")
    cat = f.method("OpenSSH: cat > /dev/null")
    acat = f.method("asyncssh: cat > /dev/null")
    agcm = f.method(f"asyncssh, {AES_GCM}: cat > /dev/null")
    ogcm = f.method(f"OpenSSH -c {AES_GCM}: cat > /dev/null")
    tarx = f.method("OpenSSH: tar | ssh tar -x")
    ztarx = f.method("OpenSSH: tar | zstd | ssh 'zstd -d | tar -x'")
    bn, ba, b0 = best(none.runs), best(auto.runs), best(nothing.runs)
    stream_py = (bn.cpu_python or 0.0) - (b0.cpu_python or 0.0)
    out = [
        f"Where the time goes ({f.content}):",
        "",
        f"- Fixed cost: an apply with nothing to send takes {nothing.best_wall:.2f} s wall, "
        f"{nothing.best_seconds:.2f} s of it connecting and querying the store; reconciler's "
        f"wall time minus its transfer time is {none.best_wall - none.best_seconds:.2f} s "
        "(start-up, models, plan, local store check, recording).",
        f"- Like for like: OpenSSH `tar | ssh tar -x` takes {tarx.best_wall:.2f} s — reconciler "
        f"none reaches {tarx.best_wall / none.best_seconds:.0%} of its throughput; OpenSSH "
        f"`tar | zstd | ssh 'zstd -d | tar -x'` {ztarx.best_wall:.2f} s — reconciler auto "
        f"{ztarx.best_wall / auto.best_seconds:.0%}. Unpacking on the host alone costs "
        f"{tarx.best_wall - cat.best_wall:+.2f} s over `cat > /dev/null`.",
        f"- Client CPU per MB sent: reconciler's own process (none, minus the fixed cost) "
        f"{stream_py / size * 1000:.1f} ms/MB; asyncssh alone (chacha20-poly1305, this "
        f"process) {best(acat.runs).cpu_local / size * 1000:.1f} ms/MB, with {AES_GCM} "
        f"{best(agcm.runs).cpu_local / size * 1000:.1f} ms/MB; the OpenSSH client "
        f"{best(cat.runs).cpu_local / size * 1000:.1f} ms/MB (chacha20-poly1305), "
        f"{best(ogcm.runs).cpu_local / size * 1000:.1f} ms/MB ({AES_GCM}). Wall: asyncssh "
        f"{acat.best_wall:.2f} s vs OpenSSH {cat.best_wall:.2f} s (chacha20-poly1305), "
        f"{agcm.best_wall:.2f} s vs {ogcm.best_wall:.2f} s ({AES_GCM}).",
        f"- Both sides share {nproc()} cores: reconciler none used {cpu_total(bn):.2f} CPU s "
        f"(its process {bn.cpu_python or 0:.2f}, tar {bn.cpu_local - (bn.cpu_python or 0):.2f}, "
        f"host {bn.cpu_hosts or 0:.2f}) in {bn.wall:.2f} s of wall; auto "
        f"{cpu_total(ba):.2f} CPU s (tar + zstd {ba.cpu_local - (ba.cpu_python or 0):.2f}); "
        f"OpenSSH cat {cpu_total(best(cat.runs)):.2f} CPU s in {cat.best_wall:.2f} s.",
        f"- Compression: auto (zstd) {auto.best_seconds:.2f} s vs none {none.best_seconds:.2f} s "
        f"({auto.best_seconds / none.best_seconds:.2f}×); zstd -3 leaves "
        f"{f.zstd_bytes / f.tar_bytes:.0%} of the bytes. On a 1 Gbit/s link (125 MB/s) the "
        f"wire alone would take {f.tar_bytes / 125e6:.2f} s uncompressed, "
        f"{f.zstd_bytes / 125e6:.2f} s compressed.",
    ]
    return out


def fanout_section(fan: Fanout) -> list[str]:
    hosts = fan.many()[0].hosts
    lines = [
        f"### 3. Fan-out: {mb(fan.size)} MB (half random) to {hosts} hosts vs 1",
        "",
        f"{mb(fan.size)} MB rather than 200 MB to keep the run short. `--max-concurrent` is "
        f"left at its default (10: all machines at once) unless the row says otherwise. The "
        "hosts are namespaces on this machine: the receiving side of all of them (sshd "
        "decryption, tar -x, writing) runs on the same cores as the sender. *wall ×*: against "
        "the 1-host row of the same method.",
        "",
        "| method | hosts | wall s | slowest machine's transfer s¹ | CPU s: Python "
        "| CPU s: local children | CPU s: hosts | wall × |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in fan.rows:
        py = "–" if r.python is None else f"{r.python:.2f}"
        children = r.local - (r.python or 0.0)
        ratio = f"{r.wall / fan.baseline(r).wall:.2f}×" if r.hosts > 1 else ""
        lines.append(
            f"| {cell(r.what)} | {r.hosts} | {r.wall:.2f} | {secs(r.transfer)} | {py} | "
            f"{children:.2f} | {secs(r.remote)} | {ratio} |"
        )
    lines += [
        "",
        "¹ from apply's JSON; with `--max-concurrent` a machine's time starts when its turn comes.",
        "",
        "Where the time goes:",
        "",
    ]
    for many in fan.many():
        one = fan.baseline(many)
        busy = (many.local + (many.remote or 0.0)) / (many.wall * nproc())
        line = (
            f"- {many.what}: {many.hosts} hosts used {many.local + (many.remote or 0):.2f} CPU "
            f"s in {many.wall:.2f} s ({busy:.0%} of {nproc()} cores; the hosts "
            f"{secs(many.remote)} s of it, vs {secs(one.remote)} s for 1 host)"
        )
        if many.python is not None and one.python is not None:
            line += (
                f"; reconciler's own process {one.python:.2f} → {many.python:.2f} CPU s — one "
                "thread, so even with the receivers on other machines its wall time could not "
                f"drop below {many.python:.2f} s = {many.python / one.wall:.2f}× the 1-host "
                "wall; what it started (tar, and zstd, once per machine) "
                f"{one.local - one.python:.2f} → {many.local - many.python:.2f} CPU s"
            )
        lines.append(line + ".")
    lines.append("")
    return lines


def goal_lines(up: Upgrade | None, fresh: list[Fresh], fan: Fanout | None) -> list[str]:
    out = ["### Goals", ""]
    if up:
        for comp in ("auto", "none"):
            rows = [r for r in up.rows if r.compression == comp]
            worst = max(rows, key=lambda r: r.tx / r.limit)
            out.append(
                f"- Upgrade, compression {comp}: veth tx ≤ 1.1 × changed size + 64 KiB on "
                f"every machine — {verdict(all(r.tx <= r.limit for r in rows))} (worst "
                f"{worst.machine}: {kib(worst.tx)} KiB of {kib(worst.limit)} KiB allowed, "
                f"{worst.tx / worst.limit:.2f}; apply's wireBytes {kib(worst.wire)} KiB)"
            )
    like = {"none": "tar | ssh tar -x", "auto": "tar | zstd | ssh 'zstd -d | tar -x'"}
    for f in fresh:
        cat = f.method("OpenSSH: cat > /dev/null").best_wall
        for comp in ("none", "auto"):
            m = f.method(f"reconciler, compression {comp}")
            ratio, ratio_wall = cat / m.best_seconds, cat / m.best_wall
            peer = f.method(f"OpenSSH: {like[comp]}").best_wall / m.best_seconds
            out.append(
                f"- Fresh {f.content}, compression {comp}: throughput ≥ 80% of OpenSSH cat — "
                f"{verdict(ratio >= GOAL_THROUGHPUT)} ({ratio:.0%} on transfer time; "
                f"{ratio_wall:.0%} on the whole command's wall time; like for like, against "
                f"OpenSSH `{like[comp]}`: {peer:.0%})"
            )
    if fan:
        for many in fan.many():
            one = fan.baseline(many)
            ratio = many.wall / one.wall
            goal = f" — {verdict(ratio <= GOAL_FANOUT)}" if many.is_reconciler else " (peer)"
            t = (
                f"; slowest machine's transfer {many.transfer / one.transfer:.2f}×"
                if many.transfer and one.transfer
                else ""
            )
            out.append(
                f"- Fan-out, {many.what}: {many.hosts} hosts within 2× of 1 host{goal} "
                f"({ratio:.2f}×: {many.wall:.2f} s vs {one.wall:.2f} s{t})"
            )
    return out


def report(
    command: str,
    version: str,
    ciphers_text: str,
    seconds: float,
    up: Upgrade | None,
    fresh: list[Fresh],
    fan: Fanout | None,
    nix: Nix,
    facts: list[str],
) -> str:
    now = dt.datetime.now(dt.UTC).isoformat(timespec="minutes")
    lines = [
        SECTION,
        "",
        "<!-- Written by `bench/transfer.py --write-results`; a new run replaces this section. -->",
        "",
        f"Date: {now}. Machine: {facts[0]}. {facts[1]}. Ciphers negotiated with the test "
        f"hosts' sshd: {ciphers_text}.",
        "",
        f"Measured: reconciler at {version}.",
        "",
        f"Command: `{command}` — {seconds:.0f} s in all; load average at the end "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}. Every apply is "
        "`reconciler --repo DIR --state DB -d DEPLOYMENT [--ref REF] apply --copy-only --yes "
        "--format json` against OpenSSH test hosts started by the script "
        "(tests/testhosts.py: sshd in network namespaces, bridged veths, on this machine). "
        "Before each timed run the host's store is emptied and `sync` run.",
        "",
    ]
    if up:
        lines += [*upgrade_section(up), ""]
    if fresh:
        lines += fresh_section(fresh, nix)
    if fan:
        lines += fanout_section(fan)
    lines += goal_lines(up, fresh, fan)
    return "\n".join(lines) + "\n"


# --- main ---------------------------------------------------------------------------------


def ensure_tools(install: bool, log: Callable[[str], None]) -> None:
    """rsync (and Nix, when installable) from Debian, when missing and we are root."""
    missing = [pkg for tool, pkg in (("rsync", "rsync"), ("nix-copy-closure", "nix-bin"))
               if not shutil.which(tool)]  # fmt: skip
    if not missing or not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    log(f"installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for pkg in missing:
        done = subprocess.run(["apt-get", "install", "-y", pkg], capture_output=True, env=env)
        if done.returncode != 0:
            log(f"apt-get install {pkg} failed: {done.stderr.decode(errors='replace')[-300:]}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time and count `reconciler apply --copy-only` over SSH against peers."
    )
    p.add_argument("--quick", action="store_true", help="small sizes, one run each")
    p.add_argument("--write-results", action="store_true", help=f"write {SECTION} of RESULTS.md")
    p.add_argument("--repeat", type=int, help="runs per timing (best is kept); 3, quick 1")
    p.add_argument(
        "--only", default="upgrade,fresh,fanout", help="scenarios to run (comma-separated)"
    )
    p.add_argument("--fresh-mb", type=int, help="size of the fresh closure (200; quick 20)")
    p.add_argument("--fanout-mb", type=int, help="size of the fan-out closure (50; quick 5)")
    p.add_argument("--fanout-hosts", type=int, help="hosts of the fan-out (10)")
    p.add_argument("--no-install", action="store_true", help="do not apt-get rsync/nix-bin")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.repeat:
        sizes = replace(sizes, repeat=args.repeat)
    if args.fresh_mb:
        sizes = replace(sizes, fresh_bytes=args.fresh_mb * MB)
    if args.fanout_mb:
        sizes = replace(sizes, fanout_bytes=args.fanout_mb * MB)
    if args.fanout_hosts:
        sizes = replace(sizes, fanout_hosts=args.fanout_hosts)
    only = {s.strip() for s in args.only.split(",")}
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    if os.geteuid() != 0:
        raise SystemExit("needs root: the test hosts are network namespaces")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    ensure_tools(not args.no_install, log)
    facts = machine_facts(load)
    version = take_snapshot()
    log(f"measuring reconciler at {version}")
    corpus()
    up: Upgrade | None = None
    fresh: list[Fresh] = []
    fan: Fanout | None = None
    count = max(sizes.upgrade_hosts if "upgrade" in only else 1,
                sizes.fanout_hosts if "fanout" in only else 1)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        work = Path(tmp)
        nix = Nix(work)
        try:
            with TestHostNetwork(count, work / "net") as net:
                hosts = Hosts(net)
                log(f"{count} test hosts up")
                ciphers_text = ciphers(hosts.all[0])
                if "upgrade" in only:
                    up = run_upgrade(hosts, work, sizes, log)
                if "fresh" in only:
                    fresh = run_fresh(hosts, work, sizes, nix, log, not args.quick)
                if "fanout" in only:
                    fan = run_fanout(hosts, work, sizes, log)
        finally:
            nix.cleanup()
            # read-only store paths: as root, rmtree removes them all the same
    command = shlex.join(
        ["python3", "bench/transfer.py", *(argv if argv is not None else sys.argv[1:])]
    )
    text = report(
        command, version, ciphers_text, time.monotonic() - started, up, fresh, fan, nix, facts
    )
    print(text)
    if args.write_results:
        write_section(RESULTS_FILE, SECTION, text)
        log(f"wrote {SECTION!r} in {RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
