"""Issue 11's scale goals: N generated deployments in one models repository (each with
its own `local` machine and one tiny process there: `exec sleep`), one real `reconciler run`
watching the work tree. Reports converge time from empty, per-deployment cost, the controller's
idle CPU with 30 s intervals, the peak memory of the controller and everything it starts
(RSS summed, and PSS: shared pages counted once), one-deployment commit → live, and a
commit of the file every deployment reads → all live. The state is SQLite, or a real
PostgreSQL server (tests/postgres.py) with 1 or 3 replicas (--postgres)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import harness as h

SERVICE = "#!/bin/sh\nexec sleep 1000000\n"
FLUX = "Flux (published): 1,000 Kustomizations in 4 min 16 s"
BEFORE = (
    "Before issue 11's work (its author, the same kind of machine): 100 deployments "
    "converged in 137 s (1.37 s each), idle 27 % of a core, one-deployment commit → live "
    "8.0–8.5 s, shared-file commit → all live 133 s; 1,000 extrapolated to 20–25 min."
)
APPLIES: list[str] = []  # --max-parallel-applies N, when --applies asks for it


def shared(version: int) -> dict[str, Any]:
    """The file every deployment reads: the package and the service."""
    service = {"package": "svc", "type": "process", "command": "bin/svc"}
    return {
        "packages": {"svc": {"src": "svc"}},
        "services": {"svc": {**service, "env": {"SHARED": str(version)}}},
    }


def own(d: str, version: int) -> dict[str, Any]:
    """A deployment's own file: its local machine, its instance there."""
    return {
        "machines": {d: {"deployment": {"targetEnv": "local"}}},
        "services": {"svc": {"env": {"OWN": str(version)}}},
        "distribution": {"svc": [d]},
    }


def names(n: int) -> list[str]:
    return [f"d{i:04}" for i in range(n)]


def make_models(repo: Path, n: int) -> str:
    h.write_program(h.new_repo(repo) / "svc/bin/svc", SERVICE)
    files = {"shared.yaml": shared(1), **{f"{d}.yaml": own(d, 1) for d in names(n)}}
    deployments = {d: ["shared.yaml", f"{d}.yaml"] for d in names(n)}
    return h.commit_models(repo, f"{n} deployments", files, deployments, interval="30s")


def tree(roots: list[int]) -> list[int]:
    """`roots` and their descendants, the services aside (they leave the tree once started)."""
    children: dict[int, list[int]] = {}
    for pid, parent in h.parents().items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], list(roots)
    while todo:
        found.append(pid := todo.pop())
        todo += [c for c in children.get(pid, []) if not h.cmdline(c).startswith(b"sleep")]
    return found


def cpu_of(pids: list[int]) -> float:
    """CPU seconds of these processes and of their children they reaped."""
    return sum(sum(int(x) for x in f[11:15]) / h.TICK for p in pids if (f := h.proc_fields(p)))


def memory_of(pids: list[int]) -> tuple[int, int]:
    """(RSS summed, PSS summed) in bytes."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("Rss", "Pss"):
                    kb = int(value.split()[0]) * 1024
                    rss, pss = (rss + kb, pss) if key == "Rss" else (rss, pss + kb)
    return rss, pss


class Peak(threading.Thread):
    def __init__(self, pids: Callable[[], list[int]]) -> None:
        super().__init__(daemon=True)
        self.pids, self.rss, self.pss, self.done = pids, 0, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):  # each look reads /proc for every process: not often
            rss, pss = memory_of(self.pids())
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)


def applied(state: str, deployments: list[str]) -> dict[str, str | None]:
    """Each deployment's last applied commit, read from the state (nothing before it is
    made and migrated)."""
    sql, rows = "SELECT name, last_applied_sha FROM deployments", []
    if state.startswith("postgresql://"):
        import psycopg

        with contextlib.suppress(psycopg.Error), psycopg.connect(state) as pg:
            rows = pg.execute(sql).fetchall()
    else:
        uri = f"file:{state}?mode=ro"
        with (
            contextlib.suppress(sqlite3.Error),
            contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as db,
        ):
            rows = db.execute(sql).fetchall()
    found: dict[str, str | None] = dict(rows)
    return {d: found.get(d) for d in deployments}


def until_live(state: str, deployments: list[str], sha: str, timeout: float) -> float:
    """Seconds until every one of `deployments` has `sha` applied."""
    start = time.monotonic()
    live = lambda: all(v == sha for v in applied(state, deployments).values())  # noqa: E731
    # asked often for one deployment, less for all (each look is a query of the state)
    h.wait_for(f"{sha[:12]} live", live, timeout, every=0.05 if len(deployments) == 1 else 0.5)
    return time.monotonic() - start


@contextlib.contextmanager
def controllers(repo: Path, state: str, replicas: int, log: Path) -> Iterator[list[int]]:
    """`replicas` × `reconciler run` (sshd's PATH: python3 is not a pyenv shim there)."""
    cmd = [*h.reconciler_cmd(repo, state), "-q", "run", *APPLIES, "--listen"]
    with contextlib.ExitStack() as stack:
        # a host registry of its own (not the claims earlier runs' deleted states left), and
        # with PostgreSQL the machines and store in the workspace, not in ./.reconciler
        env = {**h.child_env(standard_path=True), "RECONCILER_HOST_REGISTRY": str(log.parent),
               "RECONCILER_HOME": str(log.parent / "home")}  # fmt: skip
        run = [
            h.background([*cmd, f"127.0.0.1:{h.free_port()}"], env, log) for _ in range(replicas)
        ]
        yield [stack.enter_context(r).pid for r in run]


Goals = list[tuple[str, bool, bool]]  # (goal, measured at its size, met)


def measure(
    n: int, state: str, replicas: int, base: Path, idle: float, bench: h.Bench, goals: Goals
) -> str:
    """One row of the table; the goals it meets or not added to `goals`."""
    repo, every = base / "models", names(n)
    head = make_models(repo, n)
    with controllers(repo, state, replicas, base / "controller.log") as roots:
        peak = Peak(lambda: tree(roots))
        peak.start()
        converge = until_live(state, every, head, 3600)
        bench.log(f"{n} ({replicas}): converged in {converge:.1f} s")
        time.sleep(min(idle, 10))  # the last observations and conditions settle
        before, t0 = cpu_of(tree(roots)), time.monotonic()
        time.sleep(idle)
        idle_share = (cpu_of(tree(roots)) - before) / (time.monotonic() - t0)
        one = []
        for d in [every[k] for k in (n // 3, n // 2, n - 1)[: 1 if n < 10 else 3]]:
            (repo / f"{d}.yaml").write_text(json.dumps(own(d, 2)))
            one.append(until_live(state, [d], h.commit(repo, f"{d} changed"), 600))
        (repo / "shared.yaml").write_text(json.dumps(shared(2)))
        every_live = until_live(state, every, h.commit(repo, "shared file changed"), 3600)
        peak.done.set()
    kind = "PostgreSQL" if state.startswith("postgresql://") else "SQLite"
    kind += f", --max-parallel-applies {APPLIES[1]}" if APPLIES else ""
    goals += [
        (f"{kind}, {replicas}: 1,000 converge ≤ 4 min", n == 1000, converge <= 240),
        (f"{kind}, {replicas}: ≤ 0.25 s per deployment at 100", n == 100, converge / n <= 0.25),
        (f"{kind}, {replicas}: one-deployment commit → live ≤ 3 s", n == 1000, max(one) <= 3),
        (f"{kind}, {replicas}: idle ≤ 5 % of a core", n == 1000, idle_share <= 0.05),
        (f"{kind}, {replicas}: peak RSS ≤ 1 GB", n == 1000, peak.rss <= 1e9),
    ]
    return (
        f"| {n:,} | {kind} | {replicas} | {converge:.1f} s | {converge / n:.3f} s "
        f"| {idle_share:.1%} of a core | {peak.rss / 2**20:,.0f} MiB ({peak.pss / 2**20:,.0f} MiB) "
        f"| {statistics.median(one):.1f} s (max {max(one):.1f} s) | {every_live:.1f} s |"
    )


def main(argv: list[str] | None = None) -> int:
    bench = h.Bench("scale", __doc__ or "", "5 deployments, 3 s idle", repeat=1)
    goals: Goals = []
    bench.options.add_argument("--sizes", default="100,1000", help="deployments (100,1000)")
    bench.options.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU")
    bench.options.add_argument("--postgres", action="store_true", help="also 1 and 3 replicas")
    bench.options.add_argument("--applies", type=int, help="--max-parallel-applies (default its)")
    args = bench.start(argv)
    APPLIES[:] = ["--max-parallel-applies", str(args.applies)] if args.applies else []
    idle = 3.0 if args.quick else args.idle
    rows = []
    for n in [5] if args.quick else [int(x) for x in args.sizes.split(",")]:
        with h.workspace("scale") as base:
            rows.append(measure(n, str(base / "state.db"), 1, base, idle, bench, goals))
        for replicas in (1, 3) if args.postgres else ():
            from tests.postgres import PASSWORD, postgres_server

            server_of = contextlib.contextmanager(postgres_server.__wrapped__)  # type: ignore[attr-defined]
            with h.workspace("scale") as base, server_of() as server:
                server.admin(f"CREATE DATABASE scale{n}r{replicas}")
                url = server.url(f"scale{n}r{replicas}", PASSWORD)
                rows.append(measure(n, url, replicas, base, idle, bench, goals))
    met = [f"- {g}: {h.verdict(ok)}" for g, measured, ok in goals if measured]
    return bench.publish([
        *bench.header("a real `reconciler run` on N generated deployments"),
        "| deployments | state | replicas | converge from empty | per deployment | idle CPU "
        "(30 s intervals) | peak RSS (PSS) | one-deployment commit → live "
        "| shared-file commit → all live |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        BEFORE,
        "",
        f"Goals (issue 11), beside {FLUX}:",
        "",
        *(met or ["- none measured at their sizes"]),
    ])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
