#!/usr/bin/env python3
"""Benchmark a fresh deployment of 8 services to each of 20 SSH test hosts: `reconciler
apply` against `ansible-playbook` doing the same work (skipped, with a message, when ansible
is not installed). Goal (issue 4): reconciler ≥ 10× faster. See bench/README.md."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import harness as h  # beside this script

NAME = "fanout"
DEPLOYMENT = "fanout"
SERVICES, DATA_FILES, FIRST_PORT = 8, 9, 9201
ANSIBLE_ROOT = "/var/lib/ansible-bench"  # on the hosts
PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"  # lean.yml, per-service.yml
GOAL_SPEEDUP = 10.0

PORTS = {f"svc{i + 1}": FIRST_PORT + i for i in range(SERVICES)}  # service → port
NAMES = list(PORTS)


def machine_name(i: int) -> str:
    return f"h{i + 1:02d}"


def write_packages(root: Path) -> tuple[int, int]:
    """packages/svcN/{bin/svc, share/data-NN.txt} of random words: (files, bytes)."""
    rng = random.Random(4)
    letters = b"etaoinshrdlucmfwypvbgkqjxz"
    words = [bytes(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(3000)]
    files = size = 0
    for name in NAMES:
        h.write_program(root / name / "bin" / "svc", h.SERVICE)
        files, size = files + 1, size + len(h.SERVICE)
        (root / name / "share").mkdir()
        for n in range(DATA_FILES):
            target, text = rng.randint(4 * 1024, 14 * 1024), b""
            while len(text) < target:
                text += b" ".join(rng.choices(words, k=12)) + b"\n"
            (root / name / "share" / f"data-{n:02d}.txt").write_bytes(text)
            files, size = files + 1, size + len(text)
    return files, size


def make_repo(path: Path, hosts: Sequence[h.TestHost]) -> Path:
    """The models repository for these hosts (addresses and host keys are per network)."""
    h.new_repo(path)
    write_packages(path / "packages")
    machines = {
        machine_name(i): h.ssh_machine(t, maxParallel=SERVICES) for i, t in enumerate(hosts)
    }
    models = {
        "description": "bench/fanout.py: 8 services on every host",
        "machines": machines,
        "packages": {n: {"src": f"packages/{n}"} for n in NAMES},
        "services": {n: h.service(port, package=n) for n, port in PORTS.items()},
        "distribution": {n: list(machines) for n in NAMES},
    }
    h.commit_models(path, "fanout", {"models.yaml": models}, {DEPLOYMENT: ["models.yaml"]})
    return path


def write_ansible(
    d: Path, control: Path, hosts: Sequence[h.TestHost], packages: Path
) -> dict[str, str]:
    """ansible.cfg, the inventory and the playbooks' variables in `d`: ansible's environment."""
    d.mkdir(parents=True)
    ssh_args = (
        "-F /dev/null -C -o ControlMaster=auto -o ControlPersist=60s "
        "-o KexAlgorithms=^curve25519-sha256 "
        f"-o UserKnownHostsFile={hosts[0].known_hosts_file} -o GlobalKnownHostsFile=/dev/null "
        "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o IdentityAgent=none"
    )
    (d / "ansible.cfg").write_text(
        f"[defaults]\ninventory = inventory.ini\nforks = {max(20, len(hosts))}\n"
        "host_key_checking = True\ngathering = explicit\ninterpreter_python = /usr/bin/python3\n"
        "stdout_callback = ansible.posix.json\nretry_files_enabled = False\n"
        "deprecation_warnings = False\n\n[ssh_connection]\npipelining = True\n"
        f"ssh_args = {ssh_args}\ncontrol_path_dir = {control}\n"
    )
    (d / "inventory.ini").write_text(
        "\n".join(
            ["[bench]", *(f"{machine_name(i)} ansible_host={t.address}"
                          for i, t in enumerate(hosts)),
             "", "[bench:vars]", "ansible_user=root",
             f"ansible_ssh_private_key_file={hosts[0].identity_file}",
             "ansible_python_interpreter=/usr/bin/python3", ""]
        )
    )  # fmt: skip
    services = [{"name": n, "port": p, "spec": f"{n}:{p}"} for n, p in PORTS.items()]
    variables = {"packages": str(packages), "root": ANSIBLE_ROOT, "services": services}
    (d / "vars.json").write_text(json.dumps(variables, indent=1))
    # ANSIBLE_REMOTE_TEMP: also where synchronize (run on the controller) stages its module
    return dict(
        h.child_env(standard_path=True), ANSIBLE_CONFIG=str(d / "ansible.cfg"),
        ANSIBLE_HOME=str(d / "home"), ANSIBLE_LOCAL_TEMP=str(d / "tmp"),
        ANSIBLE_REMOTE_TEMP=str(d / "remote-tmp"),
    )  # fmt: skip


def stop_masters(control: Path) -> None:
    """Stop the ControlPersist masters (they would linger 60 s), then anything left whose
    command line names the control folder: processes we started."""
    for sock in control.iterdir() if control.exists() else []:
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench"],
                       capture_output=True, timeout=10, check=False)  # fmt: skip
    for pid in h.pids_naming(control):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    shutil.rmtree(control, ignore_errors=True)


def ansible_phases(stdout: str) -> list[tuple[str, float]]:
    """Per task: first host's start to last host's end, from the json callback."""
    with contextlib.suppress(ValueError):
        doc = json.loads(stdout[stdout.index("{") :])
        return [
            (t["task"]["name"], h.stamp(d["end"]) - h.stamp(d["start"]))
            for play in doc.get("plays", [])
            for t in play.get("tasks", [])
            if (d := t.get("task", {}).get("duration", {})).get("start") and d.get("end")
        ]
    return []


@dataclass
class Outcome:
    tool: str  # "reconciler" or "ansible, lean" …
    wall: float
    cpu_controller: float
    cpu_hosts: float
    busy: float  # share of all cores busy during the run
    t0: float  # when it started (wall clock)
    phases: list[tuple[str, float]] = field(default_factory=list)
    answering: int = 0
    files_ok: bool = False


def timed_tool(tool: str, cmd: list[str], env: dict[str, str], net: h.TestHostNetwork,
               cwd: Path | None = None) -> tuple[Outcome, h.Ran]:  # fmt: skip
    """Run the tool to its end; hosts' CPU so far as a negative start (the caller adds)."""
    host0 = h.sessions_cpu(net, net.hosts) or 0.0
    ran = h.run(cmd, env, cwd=cwd)
    return Outcome(tool, ran.wall, ran.cpu, -host0, ran.busy, ran.t0), ran


def reconciler_phases(
    state: Path, t0: float, t1: float, hosts: Sequence[h.TestHost]
) -> list[tuple[str, float]]:
    """From the journal; the transfer's end from the store paths' ctimes on the hosts (each
    is renamed into place when its tar stream has been unpacked)."""
    attempt = h.last_attempt(state, DEPLOYMENT)
    assert attempt is not None
    store = [t.var_lib / "reconciler" / "store" for t in hosts]
    transferred = max(
        p.stat().st_ctime for s in store for p in s.iterdir() if not p.name.startswith(".")
    )
    profiles, activations = attempt.ends("switch-profile"), attempt.ends("activate")
    return [
        ("start-up, models, plan", attempt.started - t0),
        ("build, transfer (until the last path landed)", transferred - attempt.started),
        (f"start the agents, lock {len(profiles)} machines one by one, first switch-profile",
         min(profiles) - transferred),
        ("switch the other profiles", max(profiles) - min(profiles)),
        (f"activate {len(activations)} instances", max(activations) - max(profiles)),
        ("record, unlock, exit", t1 - max(activations)),
    ]  # fmt: skip


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def end_state(out: Outcome, hosts: Sequence[h.TestHost], packages: Path) -> Outcome:
    """Every port answering (from the root namespace), one host's files as the sources."""
    out.answering = sum(h.listening(t.address, port, 2) for t in hosts for port in PORTS.values())
    var = hosts[0].var_lib
    if out.tool == "reconciler":
        copies = [c for n in NAMES for c in (var / "reconciler" / "store").glob(f"*-{n}")]
    else:
        copies = [var / ANSIBLE_ROOT.removeprefix("/var/lib/") / "packages" / n for n in NAMES]
    out.files_ok = len(copies) == len(NAMES) and all(
        tree(c) == tree(packages / n) for c, n in zip(copies, NAMES, strict=True)
    )
    return out


def one_run(tool: str, count: int, work: Path, packages: Path, log: h.Log) -> Outcome:
    """Fresh hosts, one tool, then the hosts (and everything they run) are torn down."""
    with h.host_network(count, work / "net") as net:
        hosts = net.hosts
        if tool == "reconciler":
            repo, state = make_repo(work / "models", hosts), work / "state" / "state.db"
            cmd = [*h.reconciler_cmd(repo, state, DEPLOYMENT), "apply", "--yes", "--format",
                   "json", "--max-concurrent", str(max(20, count))]  # fmt: skip
            out, _ = timed_tool(tool, cmd, h.child_env(standard_path=True), net)
            out.phases = reconciler_phases(state, out.t0, out.t0 + out.wall, hosts)
        else:
            d, control = work / "ansible", Path(tempfile.mkdtemp(prefix="fanout-cp-"))  # short
            env = write_ansible(d, control, hosts, packages)
            playbook = str(PLAYBOOKS / f"{tool.removeprefix('ansible, ').replace(' ', '-')}.yml")
            cmd = [h.tool("ansible-playbook"), "-e", f"@{d / 'vars.json'}", playbook]
            try:
                out, done = timed_tool(tool, cmd, env, net, cwd=d)
            finally:
                stop_masters(control)  # closes the sessions: the hosts' CPU of them is collected
            out.phases = ansible_phases(done.stdout)
        out.cpu_hosts += h.sessions_cpu(net, hosts) or 0.0
        end_state(out, hosts, packages)
    log(
        f"{tool}: {out.wall:.2f} s, CPU controller {out.cpu_controller:.1f} s, hosts "
        f"{out.cpu_hosts:.1f} s, {out.answering}/{count * SERVICES} answering, files "
        f"{'ok' if out.files_ok else 'DIFFERENT'}"
    )
    if out.answering != count * SERVICES or not out.files_ok:
        raise RuntimeError(f"{tool} did not reach the end state: {out}")
    return out


def calibrate_sessions(work: Path, repeat: int) -> list[tuple[str, float]]:
    """Host CPU per command over one OpenSSH connection (its set-up shared by the
    commands), as the sshd listener collects it once the connection has closed."""
    commands = [("a session running `true`", "true"), ("`python3 -c pass`", "python3 -c pass")]
    out, control = [], Path(tempfile.mkdtemp(prefix="fanout-cal-"))
    try:
        with h.host_network(1, work / "calibration") as net:
            host = net.hosts[0]
            if agent := h.agent_script():
                shutil.copy(agent, host.var_lib.parent / "tmp" / "agent.py")
                commands.append(("the agent with an unknown command", "python3 /tmp/agent.py x"))
            ssh = host.ssh_command()
            opts = ["-o", "ControlMaster=auto", "-o", f"ControlPath={control / 'm'}"]
            opts += ["-o", "ControlPersist=30"]
            for label, command in commands:
                before = h.sessions_cpu(net, [host]) or 0.0  # no session open
                for _ in range(repeat):
                    subprocess.run([*ssh[:-1], *opts, ssh[-1], "--", command], capture_output=True)
                subprocess.run([*ssh[:-1], *opts[2:4], "-O", "exit", ssh[-1]], capture_output=True)
                out.append((label, ((h.sessions_cpu(net, [host]) or 0.0) - before) / repeat))
    finally:
        stop_masters(control)
    return out


def best(outs: Sequence[Outcome]) -> Outcome:
    return min(outs, key=lambda o: o.wall)


def report(
    b: h.Bench, outcomes: dict[str, list[Outcome]], files: tuple[int, int],
    calibration: list[tuple[str, float]], skipped: str,
) -> list[str]:  # fmt: skip
    count, repeat = b.args.hosts, b.args.repeat
    rec, instances, ms = best(outcomes["reconciler"]), count * SERVICES, h.ms
    summary = (
        f"{h.best_of(repeat)} per tool (tools alternate), {count} fresh test hosts a run, "
        f"{instances} instances of {SERVICES} packages ({files[0]} files, "
        f"{files[1] / 1000:,.0f} kB)"
    )
    lines = [
        *b.header(summary + (f"; not measured: {skipped}" if skipped else "")),
        "| tool | wall s | slowest run s | vs reconciler | CPU s: controller | CPU s: hosts "
        "| hosts' CPU ms per instance | cores busy |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for tool, outs in outcomes.items():
        o = best(outs)
        lines.append(
            f"| {tool} | {o.wall:.2f} | {max(x.wall for x in outs):.2f} "
            f"| {'' if o is rec else f'{o.wall / rec.wall:.1f}×'} | {o.cpu_controller:.1f} "
            f"| {o.cpu_hosts:.1f} | {ms(o.cpu_hosts / instances)} | {o.busy:.0%} |"
        )
    lines += ["", "Where the time goes (best runs):", ""]
    for tool, outs in outcomes.items():
        o = best(outs)
        what = "journal" if tool == "reconciler" else "json callback, per task"
        lines.append(
            f"- {tool} ({what}): " + "; ".join(f"{name} {ms(s)} ms" for name, s in o.phases)
            + f" — {ms(o.wall)} ms in all."
        )  # fmt: skip
    lines += [
        "- Host CPU per command over one open SSH connection (on a fresh host): "
        + "; ".join(f"{label} {ms(cpu)} ms" for label, cpu in calibration)
        + ".",
        "",
        "### Goals",
        "",
    ]
    if skipped:
        lines.append(
            f"- reconciler ≥ {GOAL_SPEEDUP:g}× faster than ansible — not judged ({skipped})"
        )
    for tool, outs in outcomes.items():
        if tool != "reconciler":
            ratio = best(outs).wall / rec.wall
            lines.append(
                f"- reconciler ≥ {GOAL_SPEEDUP:g}× faster than {tool} — "
                f"{h.verdict(ratio >= GOAL_SPEEDUP)} ({ratio:.1f}×: {rec.wall:.2f} s vs "
                f"{best(outs).wall:.2f} s)"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    b = h.Bench(NAME, __doc__, "3 hosts, one run each, lean playbook only", repeat=2)
    b.options.add_argument("--hosts", type=int, help="test hosts (20; quick 3)")
    b.options.add_argument("--per-service", action="store_true", help="also per-service playbook")
    tools, skipped, ansible = ["reconciler", "ansible, lean"], "", "ansible-playbook: not installed"
    try:
        with tempfile.TemporaryDirectory(prefix="fanout-ansible-") as home:
            env = dict(h.child_env(), ANSIBLE_HOME=home, ANSIBLE_LOCAL_TEMP=home)
            ansible = h.first_line([h.tool("ansible-playbook"), "--version"], env)
    except SystemExit:
        skipped, tools = "ansible-playbook is not installed (pip install -e '.[bench]')", tools[:1]
    import asyncssh

    versions = [["ssh", "-V"], ["rsync", "--version"]]
    args = b.start(argv, ansible, *map(h.first_line, versions), f"asyncssh {asyncssh.__version__}")
    args.hosts = count = args.hosts or (3 if args.quick else 20)
    if count < 1:
        b.options.error("--hosts must be at least 1")
    if problem := h.hosts_problem():
        raise SystemExit(problem)
    if skipped:
        b.log(f"skipping ansible: {skipped}")
    if args.per_service and not args.quick and not skipped:
        tools.append("ansible, per service")
    outcomes: dict[str, list[Outcome]] = {t: [] for t in tools}
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        work = Path(tmp)
        files = write_packages(work / "packages")
        calibration = calibrate_sessions(work, 3 if args.quick else 20)
        b.log("host CPU per command: " + ", ".join(f"{k} {h.ms(v)} ms" for k, v in calibration))
        for round_ in range(args.repeat):
            for tool in tools if round_ % 2 == 0 else [*tools[1:2], tools[0], *tools[2:]]:
                slug = tool.replace(", ", "-").replace(" ", "-")
                run = one_run(tool, count, work / f"{slug}-{round_}", work / "packages", b.log)
                outcomes[tool].append(run)
        # read-only store paths: as root, the temporary folder is removed all the same
    return b.publish(report(b, outcomes, files, calibration, skipped))


if __name__ == "__main__":
    sys.exit(main())
