#!/usr/bin/env python3
"""Benchmark the provisioners (issue 6): EC2 machines against moto, container machines
on this host.

EC2: N machines (50) provisioned against moto's EC2 emulator, run as its own process
(`python -m moto.server` on 127.0.0.1, a free port; boto3 reaches it through
AWS_ENDPOINT_URL with fake credentials), one at a time and then in a thread pool of W
workers (16) — as `apply` runs provisioners: one thread per machine, one shared
Ec2Provisioner. Each round: `ensure` every machine (create, wait until running), `ensure`
them all again (found by tag: nothing created), `destroy` them all (terminate, wait).
After each step the script counts the deployment's live instances through
DescribeInstances: exactly N, then N again, then 0.

moto answers at once, so a round measures the client side (boto3, our calls) and the
emulator's own time. Real EC2 takes 0.1–0.5 s per API call and tens of seconds to boot an
instance: with --latency S (0.1) every round is run again with a sleep of S before each
request is sent (a botocore `before-send` hook), to show what the thread pool hides.

Containers (root only): C machines (10) made in parallel (W workers), found again,
destroyed; then the same one at a time. Their subnet is a free /24 of 10.215.0.0/16.

Every round runs --repeat times (3; 1 with --quick) and each figure is the best of them:
on a shared machine other work only ever adds time.

With --write-results the report replaces the `## provision` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import ipaddress
import logging
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from results import write_section  # beside this script

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # reconciler/ from this tree when not installed

import boto3  # noqa: E402

from reconciler.desired.state import DesiredMachine  # noqa: E402
from reconciler.provision.container import ContainerProvisioner  # noqa: E402
from reconciler.provision.ec2 import Ec2Provisioner  # noqa: E402
from reconciler.state.provisioning import SqliteRecorder  # noqa: E402

RESULTS_FILE = BENCH_DIR / "RESULTS.md"
SECTION = "## provision"
REGION = "us-east-1"


@dataclass(frozen=True)
class Round:
    what: str  # "ec2" or "container"
    count: int
    workers: int
    latency: float  # emulated seconds per API call (ec2)
    create_s: float
    again_s: float
    destroy_s: float
    calls: int  # API requests sent in the round (ec2)


def machine(name: str, target_env: str, address: str | None, provider: dict[str, Any]) -> Any:
    return DesiredMachine(
        name=name,
        target_env=target_env,
        address=address,
        ssh=None,
        state_dir=None,
        max_parallel=4,
        compression="auto",
        profile=(),
        keys={},
        properties={},
        provider=provider,
        closure=(),
    )


def timed(items: Sequence[Any], workers: int, work: Callable[[Any], Any]) -> float:
    start = time.perf_counter()
    if workers <= 1:
        for item in items:
            work(item)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, items))
    return time.perf_counter() - start


# --- EC2 against moto ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("moto.server did not start") from None
            time.sleep(0.1)


def aws_env(url: str) -> None:
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[key]
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ENDPOINT_URL=url,
    )


def live(client: Any, deployment: str) -> int:
    pages = client.get_paginator("describe_instances").paginate(
        Filters=[
            {"Name": "tag:reconciler:deployment", "Values": [deployment]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopped"]},
        ]
    )
    return sum(len(r["Instances"]) for p in pages for r in p["Reservations"])


def ec2_round(state: Path, settings: dict[str, Any], n: int, workers: int, latency: float) -> Round:
    deployment = f"bench-{n}-w{workers}-l{int(latency * 1000)}"
    calls = [0]

    def slow(**_: Any) -> None:  # before-send: the request is signed, about to go out
        calls[0] += 1
        if latency:
            time.sleep(latency)

    session = boto3.session.Session()
    session.events.register("before-send.ec2", slow)
    prov = Ec2Provisioner(session=session, max_pool_connections=max(32, workers * 2))
    recorder = SqliteRecorder.open(state, deployment)
    check = boto3.client("ec2", region_name=REGION)
    names = [f"m{i:03d}" for i in range(n)]
    machines = [machine(name, "ec2", None, settings) for name in names]
    ids: dict[str, str] = {}

    def ensure(m: Any) -> None:
        ids[m.name] = prov.ensure(deployment, m, recorder).provider_id

    create_s = timed(machines, workers, ensure)
    assert live(check, deployment) == n, "instances after create"
    again_s = timed(machines, workers, ensure)
    assert live(check, deployment) == n, "instances after ensure again: duplicates"
    destroy_s = timed(
        names, workers, lambda name: prov.destroy(deployment, name, ids[name], recorder)
    )
    assert live(check, deployment) == 0, "instances after destroy"
    recorder.close()
    return Round("ec2", n, workers, latency, create_s, again_s, destroy_s, calls[0])


def fresh(url: str, ami: str) -> dict[str, Any]:
    """Reset the emulator (it slows down as terminated instances pile up), then make what
    the machines' ec2: block names; returns that block."""
    request = urllib.request.Request(f"{url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=30):
        pass
    client = boto3.client("ec2", region_name=REGION)
    client.create_key_pair(KeyName="bench")
    client.create_security_group(GroupName="bench", Description="bench")
    return {
        "region": REGION,
        "ami": ami,
        "instanceType": "t3.micro",
        "keyPair": "bench",
        "securityGroups": ["bench"],
        "rootVolumeSize": 8,
        "tags": {"bench": "provision"},
    }


def run_ec2(args: argparse.Namespace, state: Path) -> tuple[list[Round], str]:
    proc, url = start_moto()
    try:
        aws_env(url)
        client = boto3.client("ec2", region_name=REGION)
        ami = client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        ec2_round(state, fresh(url, ami), 2, 2, 0.0)  # warm-up (moto's first calls, imports)
        rounds: list[Round] = []
        for latency in sorted({0.0, args.latency}):
            for workers in (1, args.workers):
                runs = []
                for _ in range(args.repeat):
                    settings = fresh(url, ami)
                    runs.append(ec2_round(state, settings, args.machines, workers, latency))
                    print(f"# {describe(runs[-1])}", flush=True)
                rounds.append(best(runs))
        import moto

        versions = f"boto3 {boto3.__version__}, moto {moto.__version__}"
        return rounds, versions
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- containers ----------------------------------------------------------------------


def free_subnet() -> str:
    taken = []
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        parts = line.split()
        taken.append(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True)
    for line in routes.stdout.splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest[:1].isdigit():
            taken.append(ipaddress.IPv4Network(dest, strict=False))
    xs = list(range(1, 255))
    random.shuffle(xs)
    for x in xs:
        net = ipaddress.IPv4Network(f"10.215.{x}.0/24")
        if not any(n.overlaps(net) for n in taken):
            return str(net)
    raise SystemExit("no free /24 in 10.215.0.0/16")


def container_round(root: Path, subnet: str, n: int, workers: int) -> Round:
    net = ipaddress.IPv4Network(subnet)
    deployment = f"bench-w{workers}"
    prov = ContainerProvisioner(root, subnet)
    recorder = SqliteRecorder.open(root / "state.db", deployment)
    machines = [machine(f"c{i:02d}", "container", str(net[10 + i]), {}) for i in range(n)]
    ids: dict[str, str] = {}

    def ensure(m: Any) -> None:
        ids[m.name] = prov.ensure(deployment, m, recorder).provider_id

    try:
        create_s = timed(machines, workers, ensure)
        again_s = timed(machines, workers, ensure)
    finally:
        destroy_s = timed(
            [m.name for m in machines],
            workers,
            lambda name: prov.destroy(deployment, name, ids.get(name), recorder),
        )
        recorder.close()
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(i in leftovers for i in ids.values()), "namespaces left after destroy"
    return Round("container", n, workers, 0.0, create_s, again_s, destroy_s, 0)


def run_containers(args: argparse.Namespace, base: Path) -> list[Round]:
    subnet = free_subnet()
    rounds = []
    for workers in (args.workers, 1):
        runs = []
        for i in range(args.repeat):
            root = base / f"containers-w{workers}-{i}"
            runs.append(container_round(root, subnet, args.containers, workers))
            print(f"# {describe(runs[-1])}", flush=True)
        rounds.append(best(runs))
    return rounds


def best(runs: Sequence[Round]) -> Round:
    """Each figure at its best of the runs: other work on the machine only adds time."""
    return dataclasses.replace(
        runs[0],
        create_s=min(r.create_s for r in runs),
        again_s=min(r.again_s for r in runs),
        destroy_s=min(r.destroy_s for r in runs),
    )


# --- reporting -----------------------------------------------------------------------


def describe(r: Round) -> str:
    how = "one at a time" if r.workers == 1 else f"{r.workers} threads"
    lat = f", {r.latency * 1000:.0f} ms per call" if r.what == "ec2" else ""
    return (
        f"{r.what} ×{r.count}, {how}{lat}: create {r.create_s:.2f} s, "
        f"again {r.again_s:.2f} s, destroy {r.destroy_s:.2f} s"
    )


def table(rounds: Sequence[Round]) -> str:
    lines = [
        "| machines | emulated latency per API call | parallelism | ensure (create) s "
        "| per machine s | ensure again s | destroy s | API requests | speed-up (create) |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rounds:
        serial = next(
            (
                s
                for s in rounds
                if (s.what, s.count, s.latency, s.workers) == (r.what, r.count, r.latency, 1)
            ),
            None,
        )
        speed = f"{serial.create_s / r.create_s:.1f}×" if serial and r.workers > 1 else "—"
        lines.append(
            f"| {r.count} {r.what} | "
            + (f"{r.latency * 1000:.0f} ms" if r.what == "ec2" else "—")
            + f" | {'1 (one at a time)' if r.workers == 1 else f'{r.workers} threads'} | "
            f"{r.create_s:.2f} | {r.create_s / r.count:.3f} | {r.again_s:.2f} | "
            f"{r.destroy_s:.2f} | {r.calls if r.calls else '—'} | {speed} |"
        )
    return "\n".join(lines)


def machine_facts() -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"nproc {len(os.sched_getaffinity(0))} ({cpu}), load average {load} at the start, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def report(
    args: argparse.Namespace,
    facts: str,
    versions: str,
    ec2: Sequence[Round],
    containers: Sequence[Round],
    skipped: str | None,
    seconds: float,
) -> str:
    date = dt.datetime.now().astimezone().isoformat(timespec="minutes")
    body = [
        SECTION,
        "",
        "<!-- Written by `bench/provision.py --write-results`; a new run replaces this "
        "section. -->",
        "",
        f"Date: {date}. Machine: {facts}. {versions}.",
        "",
        f"Command: `{args.command}` — {seconds:.0f} s in all, best of "
        f"{args.repeat} run{'s' * (args.repeat != 1)} per figure (wall time); "
        f"load average at the end {', '.join(f'{x:.2f}' for x in os.getloadavg())} (other "
        "work on a shared machine shows in these figures).",
        "",
        "EC2: `Ec2Provisioner.ensure` per machine against moto's emulator (`python -m "
        "moto.server` on 127.0.0.1, its own process), one at a time or in a thread pool "
        "sharing one provisioner, as `apply` runs them; then `ensure` again (found by tag, "
        "nothing made) and `destroy` (terminate and wait). Instances counted through "
        "DescribeInstances after each step: N, N, 0; the emulator is reset before each "
        "round. moto answers at once; the emulated "
        "latency is a sleep before each request (botocore `before-send`), a stand-in for "
        "EC2's 0.1–0.5 s per call (boot time, tens of seconds on EC2, is not emulated and "
        "would favour the pool further).",
        "",
        table(ec2) if ec2 else "(EC2 not measured)",
        "",
    ]
    if containers:
        body += [
            "Containers: `ContainerProvisioner.ensure` (netns, veth on the bridge, mount, PID "
            "and UTS namespaces, keys, a daemonized sshd, wait for its banner), `ensure` again "
            "(found whole: reused), `destroy` (every process, veth, netns, folder; the bridge "
            "once unused). After destroy the script checks that no namespace is left.",
            "",
            table(containers),
            "",
        ]
    elif skipped:
        body += [f"Containers: not measured ({skipped}).", ""]
    return "\n".join(body).rstrip("\n") + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Time the ec2 (moto) and container provisioners.")
    p.add_argument("--machines", type=int, default=None, help="EC2 machines (50; 10 --quick)")
    p.add_argument(
        "--containers", type=int, default=None, help="container machines (10; 3 --quick)"
    )
    p.add_argument("--workers", type=int, default=16, help="thread pool size (16)")
    p.add_argument(
        "--latency",
        type=float,
        default=None,
        help="emulated seconds per EC2 API call for the second set of rounds (0.1; 0.05 "
        "--quick); 0 measures only the raw emulator",
    )
    p.add_argument(
        "--repeat", type=int, default=None, help="runs per round, best kept (3; 1 --quick)"
    )
    p.add_argument("--quick", action="store_true", help="few machines: a smoke test")
    p.add_argument("--no-ec2", action="store_true", help="skip the EC2 rounds")
    p.add_argument("--no-containers", action="store_true", help="skip the container rounds")
    p.add_argument(
        "--write-results",
        action="store_true",
        help=f"write the report into {RESULTS_FILE.relative_to(BENCH_DIR.parent)} ({SECTION})",
    )
    args = p.parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    args.command = " ".join(["python3 bench/provision.py", *given])
    if args.machines is None:
        args.machines = 10 if args.quick else 50
    if args.containers is None:
        args.containers = 3 if args.quick else 10
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.latency is None:
        args.latency = 0.05 if args.quick else 0.1
    if min(args.machines, args.containers, args.workers, args.repeat) < 1 or args.latency < 0:
        p.error("counts and workers must be at least 1, latency not negative")
    if args.containers > 200:
        p.error("at most 200 containers (one /24)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    facts = machine_facts()
    print(f"# {facts}", flush=True)
    started = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="reconciler-bench-provision-"))
    ec2: list[Round] = []
    containers: list[Round] = []
    versions = ""
    skipped: str | None = None
    try:
        if not args.no_ec2:
            ec2, versions = run_ec2(args, base / "ec2-state.db")
        if args.no_containers:
            skipped = "--no-containers"
        elif os.geteuid() != 0:
            skipped = "needs root"
        elif shutil.which("ip") is None or not Path("/usr/sbin/sshd").exists():
            skipped = "needs iproute2 and openssh-server"
        else:
            containers = run_containers(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    seconds = time.perf_counter() - started
    text = report(args, facts, versions, ec2, containers, skipped, seconds)
    print(f"\n{text}")
    if args.write_results:
        write_section(RESULTS_FILE, SECTION, text)
        print(f"# wrote {SECTION!r} in {RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
