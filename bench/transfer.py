#!/usr/bin/env python3
"""Benchmark `reconciler apply --copy-only` over real SSH (SPEC §3 steps 2-3) on its own test
hosts (needs root): bytes on the wire for an upgrade; a fresh closure's throughput against
OpenSSH, asyncssh, tar | ssh, rsync and nix-copy-closure; fan-out to 10 hosts vs 1. Methods
compared run in rounds, each keeping its best; the whole command's overhead over a raw
`tar | ssh cat` at 200 MB and 1 GB (issue 13). bench/README.md describes what is measured."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import pstats
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import harness as h  # beside this script

NAME = "transfer"
KIB, MB = 1024, 1_000_000
REMOTE_STATE = "reconciler"  # the default stateDir /var/lib/reconciler, under host.var_lib
REMOTE_BENCH = "bench"  # /var/lib/bench: where the peers unpack
TAR = ["tar", "--sort=name", "--numeric-owner", "--owner=0", "--group=0"]  # as reconciler
ZSTD = ["zstd", "-q", "-c", "-T0", "-3"]  # as reconciler
AES_GCM = "aes128-gcm@openssh.com"
GOAL_UPGRADE_FACTOR, GOAL_UPGRADE_SLACK, GOAL_THROUGHPUT, GOAL_FANOUT = 1.1, 64 * KIB, 0.8, 2.0
CATTED = "cat > /dev/null"
CAT, TARX, ZTARX = f"OpenSSH: {CATTED}", "tar | ssh tar -x", "tar | zstd | ssh 'zstd -d | tar -x'"
RAW = f"tar | ssh {CATTED}"
UNTARRED = f"mkdir -p /var/lib/{REMOTE_BENCH} && tar -x -b 256 -B -f - -C /var/lib/{REMOTE_BENCH}"
STORED = "tar | ssh tar -x (files kept)"
OVERHEAD = "## transfer overhead of `apply --copy-only` (issue 13)"  # its own section
GOAL_OVERHEAD = 1.25


@dataclass(frozen=True)
class Sizes:
    packages: int = 50
    package_bytes: int = 200 * KIB
    upgrade_hosts: int = 3
    fresh_bytes: int = 200 * MB
    fanout_bytes: int = 50 * MB
    fanout_hosts: int = 10
    repeat: int = 3
    contents: tuple[str, ...] = ("mixed", "random")  # half random bytes, all random
    overhead_bytes: tuple[int, ...] = (200 * MB, 1000 * MB)


QUICK = Sizes(packages=6, package_bytes=32 * KIB, upgrade_hosts=2, fresh_bytes=4 * MB,
              fanout_bytes=2 * MB, fanout_hosts=2, repeat=1, contents=("mixed",),
              overhead_bytes=(4 * MB,))  # fmt: skip


@dataclass
class Measure:
    wall: float
    cpu_local: float = 0.0  # controller side: the processes started (or this process)
    cpu_python: float | None = None  # the reconciler process alone
    cpu_hosts: float | None = None  # every process of the hosts' ssh sessions
    result: dict[str, Any] = field(default_factory=dict)  # apply's JSON
    tx: dict[str, int] = field(default_factory=dict)  # host → veth bytes towards it
    rx: dict[str, int] = field(default_factory=dict)

    def transfer(self, machine: str) -> dict[str, Any]:
        return dict(self.result["transfers"][machine])

    @property
    def stream(self) -> float | None:
        """The slowest machine's transfer seconds in apply's JSON (None: not an apply)."""
        return max((t["seconds"] for t in self.result.get("transfers", {}).values()), default=None)

    def cpu_cells(self) -> str:
        """CPU s: the Python process, the rest of the local side, the hosts' sessions."""
        rest = self.cpu_local - (self.cpu_python or 0.0)
        return f"| {secs(self.cpu_python)} | {rest:.2f} | {secs(self.cpu_hosts)} "


class Hosts:
    """The test hosts, and what the benchmark reads of them from the root namespace."""

    def __init__(self, net: h.TestHostNetwork) -> None:
        self.net, self.all = net, net.hosts

    def sample(
        self, hosts: Sequence[h.TestHost]
    ) -> tuple[float | None, dict[str, int], dict[str, int]]:
        """The hosts' session CPU, and their veths' tx and rx byte counters."""
        veths = {t.name: f"/sys/class/net/{h.host_veth(self.net, t)}/statistics/" for t in hosts}
        tx, rx = (
            {k: int(Path(f"{v}{d}_bytes").read_text()) for k, v in veths.items()}
            for d in ("tx", "rx")
        )
        return h.sessions_cpu(self.net, hosts), tx, rx

    def reset(self, hosts: Sequence[h.TestHost]) -> None:
        """Empty the hosts' reconciler state (store included) and the peers' folder."""
        for t in hosts:
            for sub in (REMOTE_STATE, REMOTE_BENCH):
                shutil.rmtree(t.var_lib / sub, ignore_errors=True)
        os.sync()  # nothing left to write back that a timed run would pay for

    def measure(self, hosts: Sequence[h.TestHost], run: Callable[[], Measure]) -> Measure:
        """Run one timed thing; add the hosts' CPU and veth byte counters."""
        (cpu0, tx0, rx0), m, (cpu1, tx1, rx1) = self.sample(hosts), run(), self.sample(hosts)
        m.tx, m.rx = {k: tx1[k] - tx0[k] for k in tx1}, {k: rx1[k] - rx0[k] for k in rx1}
        m.cpu_hosts = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
        return m


def timed(
    argvs: Sequence[Sequence[str]], stdin: Path | None = None, env: dict[str, str] | None = None
) -> Measure:
    """Start every command at once (each reading `stdin`): wall and CPU time until all have
    ended; fails loudly on a non-zero exit."""
    cpu0 = h.children_cpu()
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(stdin or os.devnull, "rb")) for _ in argvs]
        t0 = time.perf_counter()
        null, pipe = subprocess.DEVNULL, subprocess.PIPE
        procs = [subprocess.Popen(a, stdin=files[i], stdout=null, stderr=pipe, env=env)
                 for i, a in enumerate(argvs)]  # fmt: skip
        errors = [p.communicate()[1] for p in procs]
        wall = time.perf_counter() - t0
    for p, err in zip(procs, errors, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"{p.args!r} exited {p.returncode}: {err.decode()[-2000:]}")
    return Measure(wall, cpu_local=h.children_cpu() - cpu0)


def best(runs: Sequence[Measure]) -> Measure:
    return min(runs, key=lambda m: m.wall)


@dataclass(frozen=True)
class Models:
    repo: Path
    state: Path  # the state DB; the local store cache is beside it
    env: dict[str, str] | None = None  # the children's (another snapshot's); else child_env()

    def args(self, deployment: str, ref: str | None = None, most: int | None = None) -> list[str]:
        return [
            "--repo", str(self.repo), "--state", str(self.state), "-d", deployment,
            *(["--ref", ref] if ref else []), "apply", "--copy-only", "--yes", "--format", "json",
            *(["--max-concurrent", str(most)] if most else []),
        ]  # fmt: skip

    def apply(self, deployment: str, ref: str | None = None, most: int | None = None) -> Measure:
        """`reconciler … apply --copy-only --format json`: wall time, its JSON, the CPU of
        the Python process itself and of everything it started."""
        env = self.env or h.child_env()
        ran = h.run([*h.reconciler_cmd(), *self.args(deployment, ref, most)], env)
        return Measure(ran.wall, ran.cpu, ran.own_cpu, result=json.loads(ran.stdout))


@functools.cache
def corpus() -> bytes:
    """Real text: Python's standard library sources (about 30 MB), concatenated."""
    parts, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "site-packages" not in path.parts and size <= 32 * MB:
            with contextlib.suppress(OSError):
                parts.append(path.read_bytes())
                size += len(parts[-1])
    if size >= MB:
        return b"".join(parts)
    rng = random.Random(7)  # no sources installed: words, still compressible
    words = [bytes(rng.choices(b"etaoinshrdlucmfw", k=rng.randint(2, 9))) for _ in range(2000)]
    return b"".join(
        w + (b"\n" if i % 12 == 11 else b" ") for i, w in enumerate(rng.choices(words, k=400_000))
    )


def content_tree(seed: int, root: Path, total: int, random_share: float) -> int:
    """Deterministic files of log-uniform sizes (4 KiB to min(8 MiB, total/8)) adding up to
    `total`: text slices of the corpus under lib/ and share/, random bytes under bin/ and
    data/. Returns how many files."""
    rng, text = random.Random(seed), corpus()
    biggest, files = max(8 * KIB, min(8 * 1024 * KIB, total // 8)), 0
    rand_total = int(total * random_share)
    for kind, target in (("text", total - rand_total), ("random", rand_total)):
        written = 0
        while written < target:
            n = int(math.exp(rng.uniform(math.log(4 * KIB), math.log(biggest))))
            n = min(n, target - written)
            if kind == "text":
                path = root / ("lib" if files % 3 else "share/doc") / f"mod{files:04d}.py"
                start = rng.randrange(len(text))
                data = (text[start : start + n] + text[:n])[:n]
            else:
                path = root / ("bin" if files % 4 == 0 else "data") / f"blob{files:04d}"
                data = rng.randbytes(n)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written, files = written + n, files + 1
    return files


def repo_with(
    path: Path, packages: dict[str, Any], deployments: dict[str, dict[str, Any]], message: str
) -> str:
    """A models repository: packages.yaml, one machines file per deployment; committed."""
    h.new_repo(path)
    files = {"packages.yaml": {"packages": packages}}
    files |= {f"{name}.yaml": {"machines": machines} for name, machines in deployments.items()}
    models = {d: ["packages.yaml", f"{d}.yaml"] for d in deployments}
    return h.commit_models(path, message, files, models)


def machine(host: h.TestHost, packages: Sequence[str], compression: str) -> dict[str, Any]:
    return {"packages": list(packages), **h.ssh_machine(host, compression=compression)}


def members(paths: Sequence[str]) -> list[str]:
    """What reconciler's tar stream holds for these store paths: each and its meta file."""
    return [m for p in paths for m in (p, f".meta/{p}.json")]


def tar_of(store: Path, sent: Sequence[str], into: Path) -> Path:
    subprocess.run([*TAR, "-C", str(store), "-cf", str(into), "--", *members(sent)], check=True)
    return into


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
    changed: str
    package_size: int
    files: int
    packages: int


def run_upgrade(hosts: Hosts, work: Path, sizes: Sizes, log: h.Log) -> Upgrade:
    targets, names = hosts.all[: sizes.upgrade_hosts], [f"p{i:02d}" for i in range(sizes.packages)]
    files = sum(content_tree(1 + i, work / "upgrade" / "src" / n, sizes.package_bytes, 0.3)
                for i, n in enumerate(names))  # fmt: skip
    deployments = {
        f"up-{c}": {f"h{i}": machine(t, names, c) for i, t in enumerate(targets)}
        for c in ("auto", "none")
    }
    base = repo_with(
        work / "upgrade", {n: {"src": f"src/{n}"} for n in names}, deployments, "packages"
    )
    changed = names[len(names) // 2]
    first = sorted((work / "upgrade" / "src" / changed / "lib").glob("*.py"))[0]
    first.write_bytes(first.read_bytes() + b"\n# upgraded: one line more\n")
    upgraded = h.commit(work / "upgrade", f"change {changed}")
    models = Models(work / "upgrade", work / "state-upgrade" / "state.db")
    rows, full = list[UpgradeRow](), dict[str, UpgradeRow]()

    def row(comp: str, m: Measure, name: str, host: h.TestHost) -> UpgradeRow:
        t = m.transfer(name)
        return UpgradeRow(comp, name, t["compression"], len(t["sent"]), t["size"], t["wireBytes"],
                          m.tx[host.name], m.rx[host.name], t["seconds"])  # fmt: skip

    for comp in ("auto", "none"):
        hosts.reset(targets)
        m = hosts.measure(targets, functools.partial(models.apply, f"up-{comp}", base))
        full[comp] = row(comp, m, "h0", targets[0])
        worst: dict[str, UpgradeRow] = {}
        for _ in range(sizes.repeat):
            m = hosts.measure(targets, functools.partial(models.apply, f"up-{comp}", upgraded))
            for i, t in enumerate(targets):
                this = row(comp, m, f"h{i}", t)
                store = t.var_lib / REMOTE_STATE / "store"
                for p in m.transfer(this.machine)["sent"]:  # so that the next round sends it again
                    shutil.rmtree(store / p, ignore_errors=True)
                    (store / ".meta" / f"{p}.json").unlink(missing_ok=True)
                if this.machine not in worst or this.tx > worst[this.machine].tx:
                    worst[this.machine] = this
            log(f"upgrade/{comp}: upgrade apply {m.wall:.2f} s, tx {sorted(m.tx.values())}")
        rows += [worst[k] for k in sorted(worst)]
    return Upgrade(rows, full, changed, sizes.package_bytes, files, len(names))


@dataclass
class Method:
    """One method of a comparison: prepare (untimed), then run (timed), once per round."""

    name: str
    prepare: Callable[[], object]
    run: Callable[[], Measure]
    apply_json: bool = False  # run is a reconciler apply: its machines' seconds are the time
    note: str = ""
    payload: bool = True  # False: nothing to send, the fixed cost
    wire: int | None = None  # apply's wireBytes
    group: str = ""  # fan-out: methods of a group compare with its 1-host one
    hosts: int = 1
    runs: list[Measure] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # transfer time (JSON) if not wall

    @property
    def best_seconds(self) -> float:
        return min(self.seconds) if self.seconds else best(self.runs).wall

    @property
    def best_wall(self) -> float:
        return best(self.runs).wall

    @property
    def transfer(self) -> float | None:
        """The best slowest machine's transfer seconds, for a reconciler apply."""
        return self.best_seconds if self.apply_json else None

    @property
    def worst_seconds(self) -> float:
        return max(self.seconds) if self.seconds else max(m.wall for m in self.runs)


def run_rounds(hosts: Hosts, group: Sequence[h.TestHost], methods: Sequence[Method], repeat: int,
               log: h.Log, what: str) -> None:  # fmt: skip
    """`repeat` rounds, each running every method once: on a noisy machine, methods compared
    with each other then see the same disturbances, and each keeps its best."""
    for _ in range(repeat):
        for m in methods:
            m.prepare()
            m.runs.append(hosts.measure(group, m.run))
            if m.apply_json and (stream := m.runs[-1].stream) is not None:
                m.seconds.append(stream)
    for m in methods:
        log(f"{what}: {m.name}: best {m.best_seconds:.2f} s, wall {m.best_wall:.2f} s")


@dataclass
class Fresh:
    content: str  # "mixed" or "random"
    size: int  # unpacked bytes of the store path
    files: int
    tar_bytes: int
    zstd_bytes: int
    first_apply: float  # building included
    build_seconds: float  # first apply wall − its transfer seconds
    others: list[str]  # sent besides the package
    methods: list[Method] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)  # summary of a profiled apply

    def method(self, name: str) -> Method:
        return next(m for m in self.methods if m.name == name)


def connect(host: h.TestHost, **extra: Any) -> Any:
    """An asyncssh connection to the test host, as reconciler's SSH target makes it."""
    import asyncssh

    key, user = [str(host.identity_file)], host.user
    return asyncssh.connect(host.address, host.port, username=user, agent_path=None,
                            client_keys=key, known_hosts=None, **extra)  # fmt: skip


def asyncssh_cat(host: h.TestHost, data: Path, cipher: str | None = None) -> Measure:
    """What reconciler's SSH target does, minus reconciler: connect, one channel, stream
    256 KiB chunks with drain(), wait for the exit status."""

    async def cat() -> None:
        extra = {"encryption_algs": [cipher]} if cipher else {}
        async with connect(host, **extra) as conn:
            proc = await conn.create_process("cat > /dev/null", encoding=None)
            with open(data, "rb") as f:
                while chunk := f.read(256 * KIB):
                    proc.stdin.write(chunk)
                    await proc.stdin.drain()
            proc.stdin.write_eof()
            if (done := await proc.wait()).exit_status != 0:
                raise RuntimeError(f"asyncssh cat: exit {done.exit_status}")

    cpu0, t0 = time.process_time(), time.perf_counter()
    asyncio.run(cat())
    cpu = time.process_time() - cpu0
    return Measure(time.perf_counter() - t0, cpu_local=cpu, cpu_python=cpu)


def ciphers(host: h.TestHost) -> str:
    """The ciphers OpenSSH and asyncssh negotiate with the test hosts' sshd."""
    ssh = host.ssh_command()
    out = subprocess.run([*ssh[:-1], "-v", ssh[-1], "true"], capture_output=True, text=True).stderr
    found = re.search(r"client->server cipher: (\S+)", out)

    async def probe() -> str:
        async with connect(host) as c:
            return str(c.get_extra_info("send_cipher"))

    return f"OpenSSH {found.group(1) if found else '?'}, asyncssh {asyncio.run(probe())}"


class Nix:
    """nix-store --add into a private chroot store (the machine's /nix/store is the test
    hosts' too: /nix is shared with them), nix-copy-closure from it to the host."""

    def __init__(self, work: Path) -> None:
        self.root, self.added = work / "nix-root", list[str]()
        missing = not (shutil.which("nix-store") and shutil.which("nix-copy-closure"))
        self.problem = "nix-store/nix-copy-closure not installed" if missing else ""

    def add(self, tree: Path) -> tuple[str, float]:
        ran = h.run(["nix-store", "--store", str(self.root), "--add", str(tree)], dict(os.environ))
        self.added.append(ran.stdout.strip())
        return self.added[-1], ran.wall

    def forget_remote(self, path: str) -> None:
        """Delete the path from the hosts' (the machine's) /nix/store, if it is there."""
        subprocess.run(["nix-store", "--delete", path], capture_output=True)

    def copy(self, host: h.TestHost, path: str) -> Measure:
        env = dict(os.environ, NIX_SSHOPTS=" ".join(host.ssh_command()[1:-1]))
        to = f"{host.user}@{host.address}"
        return timed([["nix-copy-closure", "--store", str(self.root), "--to", to, path]], env=env)

    def cleanup(self) -> None:
        for path in self.added:
            self.forget_remote(path)


PACKAGES = ("asyncssh", "asyncio", "reconciler", "cryptography", "typer", "rich")


def profile_apply(models: Models, deployment: str) -> list[str]:
    """One apply under cProfile (bench/out/transfer.prof, transfer-profile.txt): own time by
    package and the top functions."""
    raw, text = h.OUT_DIR / "transfer.prof", h.OUT_DIR / "transfer-profile.txt"
    try:
        wall = h.drive(models.args(deployment), raw).wall
    except RuntimeError as exc:
        return [f"profiled apply failed: {str(exc)[-500:]}", ""]
    entries: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    entries = pstats.Stats(str(raw)).stats  # type: ignore[attr-defined]
    total, groups = sum(e[2] for e in entries.values()), dict[str, float]()
    for (file, _, _), e in entries.items():
        other = "site-packages, other" if "site-packages" in file else "stdlib, other"
        g = next((p for p in PACKAGES if f"/{p}/" in file), other)
        g = "C functions called from Python (copies, crypto, I/O)" if file == "~" else g
        groups[g] = groups.get(g, 0.0) + e[2]
    with text.open("w") as out:
        out.write(f"reconciler {shlex.join(models.args(deployment))}\n\n")
        for key in ("tottime", "cumulative"):
            pstats.Stats(str(raw), stream=out).sort_stats(key).print_stats(40)
    by = sorted(groups.items(), key=lambda kv: kv[1], reverse=True)[:6]
    lines = [
        f"Profiled: one apply (compression none) under cProfile, {wall:.2f} s in main(), "
        f"{total:.2f} s of profiled own time — by package: "
        + ", ".join(f"{g} {t:.2f} s ({t / total:.0%})" for g, t in by)
        + f". Top functions by own time (`{text.relative_to(h.ROOT)}`, git-ignored, has more):",
        "",
    ]
    for (file, line, func), e in sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:8]:
        where = "C" if file == "~" else f"{'/'.join(Path(file).parts[-2:])}:{line}"
        lines.append(f"- `{func}` ({where}): {e[2]:.2f} s own, {e[1]:,} calls")
    return [*lines, ""]


def run_fresh(
    hosts: Hosts, work: Path, sizes: Sizes, nix: Nix, log: h.Log, profile: bool
) -> list[Fresh]:
    shares = {k: v for k, v in (("mixed", 0.5), ("random", 1.0)) if k in sizes.contents}
    return [
        fresh_one(hosts, work, n, one_package(hosts.all[0], work / n, sizes.fresh_bytes, s, 10 + i),
                  sizes, nix, log, profile and n == "mixed")
        for i, (n, s) in enumerate(shares.items())
    ]  # fmt: skip


def one_package(host: h.TestHost, repo: Path, size: int, share: float, seed: int) -> int:
    """A models repository of one package (named as the folder; `share` of its bytes random)
    in the deployments NAME-none and NAME-auto, a machine on `host` each. Returns its files."""
    name = repo.name
    files = content_tree(seed, repo / "src" / name, size, share)
    deployments = {f"{name}-{c}": {"m": machine(host, [name], c)} for c in ("none", "auto")}
    repo_with(repo, {name: {"src": f"src/{name}"}}, deployments, "one big package")
    return files


def fresh_one(hosts: Hosts, work: Path, name: str, files: int, sizes: Sizes, nix: Nix,
              log: h.Log, profile: bool) -> Fresh:  # fmt: skip
    models = Models(work / name, work / f"state-{name}" / "state.db")
    host, store = hosts.all[0], models.state.parent / "store"
    hosts.reset([host])
    first = models.apply(f"{name}-auto")
    t = first.transfer("m")
    sent: list[str] = t["sent"]  # the package, and whatever else a new machine gets
    path = next(p for p in sent if p.endswith(f"-{name}"))
    tar = tar_of(store, sent, work / f"{name}.tar")
    with open(tar, "rb") as i, open(zst := work / f"{name}.tar.zst", "wb") as o:
        subprocess.run(ZSTD, stdin=i, stdout=o, check=True)
    f = Fresh(name, t["size"], files, tar.stat().st_size, zst.stat().st_size, first.wall,
              first.wall - t["seconds"], [p for p in sent if p != path])  # fmt: skip
    ssh = host.ssh_command()
    gcm, into = [*ssh[:-1], "-c", AES_GCM, ssh[-1]], f"/var/lib/{REMOTE_BENCH}"
    pack = shlex.join([*TAR, "-C", str(store), "-cf", "-", "--", *members(sent)])
    rsync = ["rsync", "-a", "-e", shlex.join(ssh[:-1]), *(str(store / p) for p in sent)]
    rsync.append(f"{host.user}@{host.address}:{into}/")

    def pipeline(*stages: str) -> Callable[[], Measure]:
        return lambda: timed([["bash", "-o", "pipefail", "-c", " | ".join(stages)]])

    reset = functools.partial(hosts.reset, [host])
    apply_none = functools.partial(models.apply, f"{name}-none")
    apply_auto = functools.partial(models.apply, f"{name}-auto")
    cat, untar = "cat > /dev/null", f"mkdir -p {into} && tar -x -f - -C {into}"
    zstd, unz = shlex.join(ZSTD), f"mkdir -p {into} && zstd -q -d -c | tar -x -f - -C {into}"
    methods = [
        Method("reconciler, compression none", reset, apply_none, True),
        Method("reconciler, nothing to send", lambda: None, apply_none, True,  # right after it
               "the fixed cost: start-up, plan, connect, store query", payload=False),
        Method("reconciler, compression auto", reset, apply_auto, True),
        Method(CAT, reset, lambda: timed([[*ssh, cat]], tar), note="the goal's peer"),
        Method(f"OpenSSH -c {AES_GCM}: {cat}", reset, lambda: timed([[*gcm, cat]], tar)),
        Method(f"asyncssh: {cat}", reset, lambda: asyncssh_cat(host, tar), note="in this process"),
        Method(f"asyncssh, {AES_GCM}: {cat}", reset, lambda: asyncssh_cat(host, tar, AES_GCM),
               note="in this process"),
        Method(f"OpenSSH: {TARX}", reset, pipeline(pack, shlex.join([*ssh, untar])),
               note="what reconciler none does, with OpenSSH"),
        Method(f"OpenSSH: {ZTARX}", reset, pipeline(pack, zstd, shlex.join([*ssh, unz])),
               note="what reconciler zstd does, with OpenSSH"),
        Method("rsync -a", reset, lambda: timed([rsync])),
    ]  # fmt: skip
    if not nix.problem:
        try:
            nix_path, added = nix.add(store / path)
            forget = functools.partial(nix.forget_remote, nix_path)
            copy = functools.partial(nix.copy, host, nix_path)
            note = f"nix-store --add took {added:.2f} s"
            methods.append(Method("nix-copy-closure", forget, copy, note=note))
        except RuntimeError as exc:
            nix.problem = str(exc)
    run_rounds(hosts, [host], methods, sizes.repeat, log, f"fresh/{name}")
    for m in (m for m in methods if m.name.startswith("reconciler, compression")):
        t = best(m.runs).transfer("m")
        m.note, m.wire = f"used {t['compression']}", t["wireBytes"]
    f.methods = methods
    if profile:
        hosts.reset([host])
        f.profile = profile_apply(models, f"{name}-none")
    hosts.reset([host])
    tar.unlink()
    zst.unlink()
    return f


def run_fanout(hosts: Hosts, work: Path, sizes: Sizes, log: h.Log) -> tuple[int, list[Method]]:
    targets = hosts.all[: sizes.fanout_hosts]
    content_tree(20, work / "fanout" / "src" / "app", sizes.fanout_bytes, 0.5)
    deployments: dict[str, dict[str, Any]] = {}
    for c in ("auto", "none"):
        deployments[f"one-{c}"] = {"f0": machine(targets[0], ["app"], c)}
        deployments[f"all-{c}"] = {f"f{i}": machine(t, ["app"], c) for i, t in enumerate(targets)}
    repo_with(
        work / "fanout", {"app": {"src": "src/app"}}, deployments, "one package, many machines"
    )
    models = Models(work / "fanout", work / "state-fanout" / "state.db")
    hosts.reset(targets)
    first = models.apply("one-auto").transfer("f0")  # builds
    tar = tar_of(models.state.parent / "store", first["sent"], work / "fanout.tar")
    reset = functools.partial(hosts.reset, targets)
    cases: list[Method] = []
    for comp, concurrent in (("auto", None), ("none", None), ("none", 2)):
        what = f"reconciler, compression {comp}"
        label = f"{what}, --max-concurrent {concurrent}" if concurrent else what
        for dep, n in ((f"one-{comp}", 1), (f"all-{comp}", len(targets))):
            if not concurrent or n > 1:  # with one machine, the same as without
                run = functools.partial(models.apply, dep, None, concurrent)
                cases.append(Method(label, reset, run, apply_json=True, group=what, hosts=n))
    for n in (1, len(targets)):
        run = functools.partial(timed, [[*t.ssh_command(), CATTED] for t in targets[:n]], tar)
        cases.append(Method(CAT, reset, run, group="ssh", hosts=n))
    run_rounds(hosts, targets, cases, sizes.repeat, log, "fanout")
    tar.unlink()
    hosts.reset(targets)
    return first["size"], cases


@dataclass
class Overhead:
    """One size: `reconciler apply --copy-only` (each version measured, each compression)
    paired in rounds with a raw `tar | ssh cat > /dev/null` of the same files (methods[0])."""

    size: int  # unpacked bytes a fresh machine is sent (the package and the agent)
    files: int
    methods: list[Method] = field(default_factory=list)

    @property
    def raw(self) -> Measure:
        return best(self.methods[0].runs)

    def ratio(self, m: Method) -> float:
        return m.best_wall / self.raw.wall

    def median_ratio(self, m: Method) -> float:
        """The median over the rounds of this method's wall over the raw stream's."""
        pairs = zip(m.runs, self.methods[0].runs, strict=True)
        return statistics.median(a.wall / b.wall for a, b in pairs)


def total_cpu(m: Measure) -> float:
    return m.cpu_local + (m.cpu_hosts or 0.0)


def run_overhead(hosts: Hosts, work: Path, sizes: Sizes, log: h.Log,
                 versions: dict[str, dict[str, str] | None]) -> list[Overhead]:  # fmt: skip
    """Per size, a fresh closure (half random bytes, half text) to one host. `versions`:
    label → the children's environment of each reconciler measured (None: the snapshot)."""
    host, out = hosts.all[0], []
    reset = functools.partial(hosts.reset, [host])
    for size in sizes.overhead_bytes:
        name = f"o{size // MB}"
        o, stores = Overhead(0, one_package(host, work / name, size, 0.5, 30 + size // MB)), []
        for label, env in versions.items():
            models = Models(work / name, work / f"state-{name}-{label}" / "state.db", env)
            stores.append(models.state.parent / "store")
            reset()
            first = models.apply(f"{name}-none").transfer("m")  # builds the local store
            sent, o.size = first["sent"], first["size"]
            for c in ("none", "auto"):
                run = functools.partial(models.apply, f"{name}-{c}")
                label_ = f"reconciler {label}".rstrip()
                o.methods.append(Method(f"{label_}, compression {c}", reset, run, True))
        pack = shlex.join(["tar", "-C", str(stores[0]), "-cf", "-", "--", *members(sent)])
        raw = f"{pack} | {shlex.join([*host.ssh_command(), CATTED])}"
        peer = functools.partial(timed, [["bash", "-o", "pipefail", "-c", raw]])
        o.methods.insert(0, Method(RAW, reset, peer))
        # the same stream kept as files there: what storing it costs the host, measured
        stored = f"{pack} | {shlex.join([*host.ssh_command(), UNTARRED])}"
        keep = functools.partial(timed, [["bash", "-o", "pipefail", "-c", stored]])
        o.methods.insert(1, Method(STORED, reset, keep))
        run_rounds(hosts, [host], o.methods, sizes.repeat, log, f"overhead/{name}")
        out.append(o)
        for folder in (work / name, *(s.parent for s in stores)):
            shutil.rmtree(folder, ignore_errors=True)
    reset()
    return out


def overhead_section(b: h.Bench, rows: Sequence[Overhead], repeat: int, baseline: str) -> list[str]:
    lines = [
        OVERHEAD,
        *b.header(f"{h.best_of(repeat, 'round')} per size")[1:],
        *([f"*before*: reconciler as committed at {baseline}; *after*: the snapshot above.", ""]
          if baseline else []),
        "A fresh closure to one OpenSSH test host: `reconciler … apply --copy-only` paired in "
        f"rounds with a raw `tar -C STORE -cf - PATHS | ssh HOST '{CATTED}'` of the same files "
        "(README.md, *Overhead*, says what each column is; CPU and split: the best run). "
        f"The second row keeps the files there (`{UNTARRED}`): the raw stream's cost plus "
        "what storing them costs the host, which the first row does not pay.",
        "",
    ]  # fmt: skip
    for o in rows:
        raw = total_cpu(o.raw)
        lines += [
            f"**{mb(o.size)} MB** ({o.files} files and the agent):",
            "",
            "| method | best wall s | median wall s | × raw | transfer s | fixed s | CPU s "
            "| CPU × raw |",
            "|---|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for m in o.methods:
            b_, median = best(m.runs), statistics.median(r.wall for r in m.runs)
            fixed = None if b_.stream is None else b_.wall - b_.stream
            lines.append(
                f"| {cell(m.name)} | {m.best_wall:.2f} | {median:.2f} | {o.ratio(m):.2f}× "
                f"({o.median_ratio(m):.2f}×) | {secs(b_.stream)} | {secs(fixed)} "
                f"| {total_cpu(b_):.2f} | {total_cpu(b_) / raw:.2f}× |"
            )
        lines.append("")
    lines += [f"Goal (issue 13): the whole command within {GOAL_OVERHEAD}× the raw stream at "
              "200 MB and at 1 GB:", ""]  # fmt: skip
    for o in rows:
        for m in o.methods[2:]:
            r = o.ratio(m)
            lines.append(f"- {mb(o.size)} MB, {m.name}: {h.verdict(r <= GOAL_OVERHEAD)} ({r:.2f}×)")
    return [*lines, "", *budget_lines(rows), ""]


def budget_lines(rows: Sequence[Overhead]) -> list[str]:
    """What the goal leaves beyond the raw stream, against what the command spends outside
    its transfer (the last version measured, compression none)."""
    out = ["Where the time goes (the last version measured, compression none):", ""]
    for o in rows:
        m = [x for x in o.methods if x.name.endswith("compression none")][-1]
        b_, raw = best(m.runs), o.raw.wall
        stream = b_.stream or 0.0
        out.append(
            f"- {mb(o.size)} MB: the goal allows {(GOAL_OVERHEAD - 1) * raw:.2f} s beyond the raw "
            f"stream's {raw:.2f} s; the command spends {b_.wall - stream:.2f} s outside its "
            f"transfer, whose {stream:.2f} s are {stream / raw:.2f}× the raw stream's wall time."
        )
    return out


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def mb(n: float) -> str:
    return f"{n / MB:,.1f}"


def kib(n: float) -> str:
    return f"{n / KIB:,.1f}"


def secs(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def upgrade_section(up: Upgrade) -> list[str]:
    n = up.packages
    lines = [
        f"### 1. Upgrade after changing one of {n} packages",
        "",
        f"{n} packages of ~{up.package_size // KIB} KiB ({up.files} files) in the profile of "
        f"{len(up.rows) // 2} machines; one line appended to a file of `{up.changed}`. The worst "
        "of the runs per machine.",
        "",
        "| compression | machine | used | paths sent | changed size KiB | apply wire KiB | veth tx "
        "KiB | veth rx KiB | limit KiB | tx / limit | tx − wire KiB | goal |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in up.rows:
        lines.append(
            f"| {r.compression} | {r.machine} | {r.used} | {r.paths} | {kib(r.size)} "
            f"| {kib(r.wire)} | {kib(r.tx)} | {kib(r.rx)} | {kib(r.limit)} | {r.tx / r.limit:.2f} "
            f"| {kib(r.tx - r.wire)} | {h.verdict(r.tx <= r.limit)} |"
        )
    lines.append("")
    for comp, r in up.full.items():
        lines.append(
            f"- First, full transfer (compression {comp}, {r.machine}): {r.paths} paths ({n} "
            f"packages{' and reconciler’s own' if r.paths > n else ''}), {kib(r.size)} KiB "
            f"unpacked, apply wire {kib(r.wire)} KiB ({r.used}), veth tx {kib(r.tx)} KiB, rx "
            f"{kib(r.rx)} KiB, {r.seconds:.2f} s."
        )
    return [*lines, ""]


def fresh_section(f: Fresh) -> list[str]:
    cat = f.method(CAT).best_wall
    kind = "half random bytes, half text" if f.content == "mixed" else "all random bytes"
    lines = [
        f"**{f.content}** ({kind}): one store path of {mb(f.size)} MB in {f.files} files; as a "
        f"tar stream {mb(f.tar_bytes)} MB, zstd -3: {mb(f.zstd_bytes)} MB "
        f"({f.zstd_bytes / f.tar_bytes:.0%}). First apply "
        f"(building from Git included): {f.first_apply:.2f} s, of which about "
        f"{f.build_seconds:.2f} s before the transfer.",
        "",
        "| method | transfer s | slowest run s | MB/s | vs OpenSSH cat | wall s | apply wire MB "
        "| veth tx MB | CPU s: Python | CPU s: local children | CPU s: host | note |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]  # fmt: skip
    for m in f.methods:
        b, t = best(m.runs), m.best_seconds
        speed = f"| {f.size / t / MB:,.0f} | {cat / t:.0%} " if m.payload else "| – | – "
        lines.append(
            f"| {cell(m.name)} | {t:.2f} | {m.worst_seconds:.2f} {speed}"
            f"| {m.best_wall:.2f} | {mb(m.wire) if m.wire else '–'} | {mb(sum(b.tx.values()))} "
            f"{b.cpu_cells()}| {m.note} |"
        )
    by = {m.name.removeprefix("reconciler, compression "): m for m in f.methods}
    none, auto, nothing = by["none"], by["auto"], by["reconciler, nothing to send"]
    tarx, ztarx = by[f"OpenSSH: {TARX}"], by[f"OpenSSH: {ZTARX}"]
    acat, agcm = by[f"asyncssh: {CATTED}"], by[f"asyncssh, {AES_GCM}: {CATTED}"]
    size, ogcm = f.size / MB, by[f"OpenSSH -c {AES_GCM}: {CATTED}"]

    def per_mb(m: Method) -> str:
        return f"{best(m.runs).cpu_local / size * 1000:.1f} ms/MB"

    stream_py = (best(none.runs).cpu_python or 0.0) - (best(nothing.runs).cpu_python or 0.0)
    return [
        *lines,
        "",
        f"Where the time goes ({f.content}):",
        "",
        f"- Fixed cost: an apply with nothing to send takes {nothing.best_wall:.2f} s wall, "
        f"{nothing.best_seconds:.2f} s of it connecting and querying the store; reconciler's wall "
        f"minus its transfer time is {none.best_wall - none.best_seconds:.2f} s.",
        f"- Like for like: OpenSSH `{TARX}` takes {tarx.best_wall:.2f} s — reconciler none "
        f"reaches {tarx.best_wall / none.best_seconds:.0%} of its throughput; OpenSSH `{ZTARX}` "
        f"{ztarx.best_wall:.2f} s — reconciler auto {ztarx.best_wall / auto.best_seconds:.0%}. "
        f"Unpacking on the host costs {tarx.best_wall - cat:+.2f} s over `cat > /dev/null`.",
        f"- Client CPU per MB sent: reconciler's own process (none, minus the fixed cost) "
        f"{stream_py / size * 1000:.1f} ms/MB; asyncssh alone (chacha20-poly1305) {per_mb(acat)}, "
        f"with {AES_GCM} {per_mb(agcm)}; the OpenSSH client {per_mb(f.method(CAT))}, "
        f"{per_mb(ogcm)} ({AES_GCM}). Wall: asyncssh {acat.best_wall:.2f} s vs OpenSSH {cat:.2f} "
        f"s (chacha20-poly1305), {agcm.best_wall:.2f} s vs {ogcm.best_wall:.2f} s ({AES_GCM}).",
        "",
        *f.profile,
    ]  # fmt: skip


def single(r: Method, rows: Sequence[Method]) -> Method:
    """The 1-host method that fan-out method `r` compares with."""
    return next(o for o in rows if o.group == r.group and o.hosts == 1)


def fanout_section(size: int, rows: Sequence[Method]) -> list[str]:
    many = [r for r in rows if r.hosts > 1]
    lines = [
        f"### 3. Fan-out: {mb(size)} MB (half random) to {many[0].hosts} hosts vs 1",
        "",
        "`--max-concurrent` at its default (all machines at once) unless the row says otherwise.",
        "",
        "| method | hosts | wall s | slowest machine's transfer s | CPU s: Python | CPU s: local "
        "children | CPU s: hosts | wall × |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        ratio = f"{r.best_wall / single(r, rows).best_wall:.2f}×" if r.hosts > 1 else ""
        lines.append(
            f"| {r.name} | {r.hosts} | {r.best_wall:.2f} | {secs(r.transfer)} "
            f"{best(r.runs).cpu_cells()}| {ratio} |"
        )
    lines.append("")
    for r in many:
        if (python := best(r.runs).cpu_python) is not None:
            lines.append(
                f"- {r.name}: reconciler's own process used {python:.2f} CPU s — one thread, so "
                f"its wall time could not drop below {python / single(r, rows).best_wall:.2f}× "
                "the 1-host wall."
            )
    return [*lines, ""]


def goal_lines(up: Upgrade | None, fresh: list[Fresh], fan: Sequence[Method]) -> list[str]:
    out = ["### Goals", ""]
    for comp in ("auto", "none") if up else ():
        rows = [r for r in up.rows if r.compression == comp] if up else []
        w = max(rows, key=lambda r: r.tx / r.limit)
        out.append(
            f"- Upgrade, compression {comp}: veth tx ≤ 1.1 × changed size + 64 KiB on every "
            f"machine — {h.verdict(all(r.tx <= r.limit for r in rows))} (worst {w.machine}: "
            f"{kib(w.tx)} KiB of {kib(w.limit)} KiB allowed, {w.tx / w.limit:.2f}; apply's "
            f"wireBytes {kib(w.wire)} KiB)"
        )
    for f in fresh:
        cat = f.method(CAT).best_wall
        for comp, like in (("none", TARX), ("auto", ZTARX)):
            m = f.method(f"reconciler, compression {comp}")
            ratio = cat / m.best_seconds
            peer = f.method(f"OpenSSH: {like}").best_wall / m.best_seconds
            out.append(
                f"- Fresh {f.content}, compression {comp}: throughput ≥ 80% of OpenSSH cat — "
                f"{h.verdict(ratio >= GOAL_THROUGHPUT)} ({ratio:.0%} on transfer time; "
                f"{cat / m.best_wall:.0%} on the whole command's wall time; like for like, "
                f"against OpenSSH `{like}`: {peer:.0%})"
            )
    for r in (r for r in fan if r.hosts > 1):
        o = single(r, fan)
        ratio, mine = r.best_wall / o.best_wall, r.apply_json
        rt, ot = r.transfer, o.transfer
        t = f"; slowest machine's transfer {rt / ot:.2f}×" if rt and ot else ""
        out.append(
            f"- Fan-out, {r.name}: {r.hosts} hosts within 2× of 1 host"
            f"{f' — {h.verdict(ratio <= GOAL_FANOUT)}' if mine else ' (peer)'} ({ratio:.2f}×: "
            f"{r.best_wall:.2f} s vs {o.best_wall:.2f} s{t})"
        )
    return out


def report(b: h.Bench, up: Upgrade | None, fresh: list[Fresh],
           fan: tuple[int, list[Method]] | None, nix: Nix) -> list[str]:  # fmt: skip
    lines = [
        *b.header(),
        *(upgrade_section(up) if up else []),
    ]
    if fresh:
        others = sorted({p for f in fresh for p in f.others})
        lines += ["### 2. Fresh closure to 1 host", ""]
        for f in fresh:
            lines += fresh_section(f)
        lines += [
            *([f"A new machine also gets {', '.join(f'`{p}`' for p in others)} besides the "
               "package: tar and rsync send it too, nix-copy-closure the package alone.", ""]
              if others else []),
            f"Nix: not measured — {nix.problem}" if nix.problem else "Nix: `nix-copy-closure` "
            "from a private chroot store (`nix-store --store <tmp>/nix-root --add`).",
            "",
        ]  # fmt: skip
    return [
        *lines,
        *(fanout_section(*fan) if fan else []),
        *goal_lines(up, fresh, fan[1] if fan else []),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    b = h.Bench(NAME, "Time and count `reconciler apply --copy-only` over SSH against peers.",
                "tiny sizes on 2 hosts, one run each, no profile")  # fmt: skip
    b.options.add_argument("--only", default="upgrade,fresh,fanout,overhead",
                           help="scenarios (all four); overhead has its own section")  # fmt: skip
    b.options.add_argument("--baseline", metavar="REF", help="overhead: also measure REF")
    b.options.add_argument("--no-install", action="store_true", help="no apt-get rsync/nix-bin")
    # the baseline's snapshot first: Bench.start's, taken last, is what the children import
    baseline = b.options.parse_args(argv).baseline
    versions: dict[str, dict[str, str] | None] = {"": None}
    if baseline:
        h.take_snapshot(f"{NAME}-baseline", baseline)
        versions = {"before": h.child_env(), "after": None}
    args = b.start(argv)
    if problem := h.hosts_problem():
        raise SystemExit(problem)
    only = {s.strip() for s in args.only.split(",")}
    packages = {"rsync": "rsync", "nix-copy-closure": "nix-bin"}  # fresh's peers
    missing = [pkg for tool, pkg in packages.items() if not shutil.which(tool)] * ("fresh" in only)
    if missing and not (args.no_install or args.quick) and shutil.which("apt-get"):
        b.log(f"installing {' '.join(missing)} with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", *missing], capture_output=True, env=env)
    import asyncssh

    tools = [["ssh", "-V"], ["zstd", "-V"], ["rsync", "--version"], ["nix-store", "--version"]]
    b.note(f"asyncssh {asyncssh.__version__}", *map(h.first_line, tools))
    sizes = replace(QUICK if args.quick else Sizes(), repeat=args.repeat)
    up, fresh, fan, over = None, [], None, []
    with h.workspace(NAME) as work:
        nix = Nix(work)
        if nix.problem:
            b.log(f"skipping nix-copy-closure: {nix.problem}")
        try:
            wanted = {"upgrade": sizes.upgrade_hosts, "fanout": sizes.fanout_hosts}
            count = max([1, *(n for k, n in wanted.items() if k in only)])  # fresh, overhead: 1
            with h.host_network(count, work / "net") as net:
                hosts = Hosts(net)
                b.note(f"ciphers negotiated with the test hosts' sshd: {ciphers(hosts.all[0])}")
                if "upgrade" in only:
                    up = run_upgrade(hosts, work, sizes, b.log)
                if "fresh" in only:
                    fresh = run_fresh(hosts, work, sizes, nix, b.log, not args.quick)
                if "fanout" in only:
                    fan = run_fanout(hosts, work, sizes, b.log)
                if "overhead" in only:
                    over = run_overhead(hosts, work, sizes, b.log, versions)
        finally:
            nix.cleanup()
    if only & {"upgrade", "fresh", "fanout"}:
        b.publish(report(b, up, fresh, fan, nix))
    if over:
        publish_overhead(b, overhead_section(b, over, sizes.repeat, args.baseline or ""))
    return 0


def publish_overhead(b: h.Bench, lines: Sequence[str]) -> None:
    """Like Bench.publish, into the overhead's own section."""
    text = "\n".join(lines).rstrip("\n") + "\n"
    print(text, flush=True)
    if b.args.write_results:
        h.write_section(h.RESULTS_FILE, OVERHEAD, text)
        b.log(f"wrote '{OVERHEAD}' in {h.RESULTS_FILE}")


if __name__ == "__main__":
    sys.exit(main())
