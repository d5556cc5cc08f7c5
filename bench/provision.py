#!/usr/bin/env python3
"""Benchmark the provisioners (issue 6): EC2 machines against moto's emulator and container
machines on this host (root only), one at a time and in a thread pool as `apply` runs them:
ensure, ensure again, destroy, counting live machines after each step. See bench/README.md."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness as h  # beside this script

NAME = "provision"
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


def timed(items: Sequence[Any], workers: int, work: Callable[[Any], Any]) -> float:
    """Seconds to do `work` on every item in a pool of `workers` threads (1: one at a time)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, items))
    return time.perf_counter() - start


def best(runs: Sequence[Round]) -> Round:
    """Each figure at its best of the runs: other work on the machine only adds time."""
    figures = ("create_s", "again_s", "destroy_s")
    return dataclasses.replace(runs[0], **{k: min(getattr(r, k) for r in runs) for k in figures})


def machines_round(
    what: str, prov: Any, recorder: Any, deployment: str, machines: Sequence[Any], workers: int,
    count: Callable[[dict[str, str]], int], latency: float = 0.0,
    calls: Callable[[], int] = lambda: 0,
) -> Round:  # fmt: skip
    """ensure every machine, ensure again, destroy; `count(ids)`: how many are live."""
    n = len(machines)
    ids: dict[str, str] = {}

    def ensure(m: Any) -> None:
        ids[m.name] = prov.ensure(deployment, m, recorder).provider_id

    try:
        create_s = timed(machines, workers, ensure)
        assert count(ids) == n, "machines after create"
        again_s = timed(machines, workers, ensure)
        assert count(ids) == n, "machines after ensure again: duplicates"
    finally:
        names = [m.name for m in machines]
        destroy = lambda name: prov.destroy(deployment, name, ids.get(name), recorder)  # noqa: E731
        destroy_s = timed(names, workers, destroy)
        recorder.close()
    assert count(ids) == 0, "machines after destroy"
    return Round(what, n, workers, latency, create_s, again_s, destroy_s, calls())


@contextlib.contextmanager
def emulator() -> Iterator[str]:
    """moto's EC2 emulator on a free port, running meanwhile: its URL."""
    url = f"http://127.0.0.1:{(port := h.free_port())}"
    with h.background([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]):
        h.wait_for("moto.server", lambda: h.answer(f"{url}/moto-api/"), 30, 0.1)
        yield url


def ec2_round(state: Path, settings: dict[str, Any], n: int, workers: int, latency: float) -> Round:
    import boto3

    calls = [0]

    def slow(**_: Any) -> None:  # before-send: the request is signed, about to go out
        calls[0] += 1
        time.sleep(latency)

    session = boto3.session.Session()
    session.events.register("before-send.ec2", slow)
    deployment = f"bench-{n}-w{workers}-l{int(latency * 1000)}"
    check = boto3.client("ec2", region_name=REGION)

    def live(_: dict[str, str]) -> int:
        mine = {"Name": "tag:reconciler:deployment", "Values": [deployment]}
        up = {"Name": "instance-state-name", "Values": ["pending", "running", "stopped"]}
        pages = check.get_paginator("describe_instances").paginate(Filters=[mine, up])
        return sum(len(r["Instances"]) for p in pages for r in p["Reservations"])

    machines = [h.desired_machine(f"m{i:03d}", "ec2", None, settings) for i in range(n)]
    ec2, _, recorder = h.provisioners()
    prov = ec2(session=session, max_pool_connections=max(32, workers * 2))
    rec, sent = recorder.open(state, deployment), lambda: calls[0]
    return machines_round("ec2", prov, rec, deployment, machines, workers, live, latency, sent)


def fresh(url: str, ami: str) -> dict[str, Any]:
    """Reset the emulator (it slows down as terminated instances pile up), then make what the
    machines' ec2: block names; returns that block."""
    import boto3

    h.http(f"{url}/moto-api/reset", b"")
    client = boto3.client("ec2", region_name=REGION)
    client.create_key_pair(KeyName="bench")
    client.create_security_group(GroupName="bench", Description="bench")
    return {
        "region": REGION, "ami": ami, "instanceType": "t3.micro", "keyPair": "bench",
        "securityGroups": ["bench"], "rootVolumeSize": 8, "tags": {"bench": "provision"},
    }  # fmt: skip


def run_ec2(machines: int, workers: int, latency: float, repeat: int, state: Path) -> list[Round]:
    import boto3

    with emulator() as url:
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            del os.environ[key]
        os.environ.update(
            AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true",
            AWS_ENDPOINT_URL=url,
        )  # fmt: skip
        client = boto3.client("ec2", region_name=REGION)
        ami = client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        ec2_round(state, fresh(url, ami), 2, 2, 0.0)  # warm-up (moto's first calls, imports)
        rounds: list[Round] = []
        for lat in sorted({0.0, latency}):
            for w in (1, workers):
                runs = [ec2_round(state, fresh(url, ami), machines, w, lat) for _ in range(repeat)]
                rounds.append(best(runs))
        return rounds


def free_subnet() -> str:
    """A /24 of 10.215.0.0/16 that no address or route of this host overlaps."""
    ip = [subprocess.run(["ip", "-4", what], capture_output=True, text=True).stdout
          for what in ("addr", "route")]  # fmt: skip
    found = re.findall(r"\b\d+\.\d+\.\d+\.\d+(?:/\d+)?", "\n".join(ip))
    taken = [ipaddress.IPv4Network(x, strict=False) for x in found]
    for x in random.sample(range(1, 255), 254):
        net = ipaddress.IPv4Network(f"10.215.{x}.0/24")
        if not any(n.overlaps(net) for n in taken):
            return str(net)
    raise SystemExit("no free /24 in 10.215.0.0/16")


def container_round(root: Path, subnet: str, n: int, workers: int) -> Round:
    net, deployment = ipaddress.IPv4Network(subnet), f"bench-w{workers}"
    _, container, record = h.provisioners()
    prov, recorder = container(root, subnet), record.open(root / "state.db", deployment)
    machines = [h.desired_machine(f"c{i:02d}", "container", str(net[10 + i]), {}) for i in range(n)]

    def live(ids: dict[str, str]) -> int:  # provider ids are the namespaces' names
        found = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return sum(i in found for i in ids.values())

    return machines_round("container", prov, recorder, deployment, machines, workers, live)


def table(rounds: Sequence[Round]) -> list[str]:
    lines = [
        "| machines | emulated latency per API call | parallelism | ensure (create) s "
        "| per machine s | ensure again s | destroy s | API requests | speed-up (create) |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rounds:
        key = (r.what, r.count, r.latency)
        serial = next(
            (s for s in rounds if (s.what, s.count, s.latency, s.workers) == (*key, 1)), None
        )
        speed = f"{serial.create_s / r.create_s:.1f}×" if serial and r.workers > 1 else "—"
        lines.append(
            f"| {r.count} {r.what} | {f'{h.ms(r.latency)} ms' if r.what == 'ec2' else '—'} "
            f"| {'1 (one at a time)' if r.workers == 1 else f'{r.workers} threads'} "
            f"| {r.create_s:.2f} | {r.create_s / r.count:.3f} | {r.again_s:.2f} "
            f"| {r.destroy_s:.2f} | {r.calls or '—'} | {speed} |"
        )
    return lines


def report(
    b: h.Bench, ec2: Sequence[Round], containers: Sequence[Round], skipped: str
) -> list[str]:
    return [
        *b.header(f"{h.best_of(b.args.repeat)} per figure"),
        *(table(ec2) if ec2 else ["(EC2 not measured)"]),
        "",
        *(table(containers) if containers else [f"Containers: not measured ({skipped})."]),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    b = h.Bench(NAME, __doc__, "few machines (4 EC2, 2 containers), one run: a smoke test")
    add = b.options.add_argument
    add("--machines", type=int, help="EC2 machines (50; quick 4)")
    add("--containers", type=int, help="container machines (10; quick 2)")
    add("--workers", type=int, default=16, help="thread pool size (16)")
    add("--latency", type=float, help="emulated s per EC2 API call (0.1; quick 0.02)")
    add("--no-ec2", action="store_true", help="skip the EC2 rounds")
    add("--no-containers", action="store_true", help="skip the container rounds")
    import boto3
    import moto

    args = b.start(argv, f"boto3 {boto3.__version__}, moto {moto.__version__}")
    machines = args.machines or (4 if args.quick else 50)
    containers = args.containers or (2 if args.quick else 10)
    latency = args.latency if args.latency is not None else 0.02 if args.quick else 0.1
    if min(machines, containers, args.workers) < 1 or latency < 0 or containers > 200:
        b.options.error("counts and workers at least 1 (at most 200 containers), latency ≥ 0")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    h.import_snapshot()  # the provisioners run in this process
    ec2: list[Round] = []
    made: list[Round] = []
    skipped = ""
    with h.workspace(NAME) as base:
        if not args.no_ec2:
            ec2 = run_ec2(machines, args.workers, latency, args.repeat, base / "ec2-state.db")
        if args.no_containers:
            skipped = "--no-containers"
        elif os.geteuid() != 0:
            skipped = "needs root"
        elif shutil.which("ip") is None or not Path("/usr/sbin/sshd").exists():
            skipped = "needs iproute2 and openssh-server"
        else:
            subnet = free_subnet()
            for w in (args.workers, 1):
                runs = [container_round(base / f"c-w{w}-{i}", subnet, containers, w)
                        for i in range(args.repeat)]  # fmt: skip
                made.append(best(runs))
    return b.publish(report(b, ec2, made, skipped))


if __name__ == "__main__":
    sys.exit(main())
