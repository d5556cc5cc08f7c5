#!/usr/bin/env python3
"""Benchmark a fresh deployment to many machines: `reconciler apply` against
`ansible-playbook` doing the same work, in one run.

The system: 8 independent `process` services, each its own package (a small Python
program that listens on $HOST:$PORT at once and answers HTTP, plus 9 data files: 80 files,
~0.7 MB in all), every service on every host: 160 instances on 20 hosts. The hosts are
real OpenSSH servers in network namespaces on this machine (tests/testhosts.py), started
fresh for every timed run, so both tools always begin from empty hosts.

- **reconciler**: 20 `targetEnv: ssh` machines (`ssh: {host, identityFile, hostKey}`,
  `maxParallel: 8`), health check `tcp: true`; `reconciler --repo DIR --state DB -d fanout
  apply --yes --format json --max-concurrent 20` from a fresh state DB (so it also builds
  the 8 packages from Git): build, one store query and one tar stream per machine, lock,
  switch profiles, activate (start each program detached, wait for its port), record.
- **ansible**: `ansible-playbook` (forks 20, pipelining on, ControlPersist as by default,
  no fact gathering, host keys checked against the hosts' known_hosts file) with an
  inventory of the same hosts. Two playbooks, both ending in the same state (the same
  files on every host, the same 8 programs running with the same HOST/PORT, each answering
  on its port):
  - *lean*: 3 tasks — `ansible.posix.synchronize` of the whole packages folder (one rsync
    per host), one `shell` task that starts the 8 programs (`setsid nohup … &`), one
    `wait_for` per port (a loop of 8);
  - *per service* (with --per-service; not with --quick): what a playbook written service
    by service looks like — a loop of 8 `synchronize`, a loop of 8 `shell` starts and the
    same `wait_for` loop.

After each run every one of the 160 ports is checked from the root namespace, and one
host's files are compared with the sources; then the hosts are torn down (every process
they ran goes with them) and ansible's ControlPersist masters are stopped. CPU time is
counted for the controller (the tool and everything it waited for) and for the hosts
(every finished ssh session, as the sshd listeners collected it).

Goal (issue 4): reconciler at least 10× faster than ansible.

With --write-results the report replaces the `## fanout` section of bench/RESULTS.md.
Run `python3 bench/fanout.py -h` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH_DIR))

import snapshot  # noqa: E402  (beside this script)
from results import write_section  # noqa: E402  (beside this script)

from tests.testhosts import TestHost, TestHostNetwork  # noqa: E402

OUT_DIR = BENCH_DIR / "out"
SNAPSHOT_DIR = OUT_DIR / "fanout-snapshot"
RESULTS_FILE = BENCH_DIR / "RESULTS.md"
SECTION = "## fanout"
DEPLOYMENT = "fanout"
SERVICES = 8
DATA_FILES = 9
FIRST_PORT = 9201
ANSIBLE_ROOT = "/var/lib/ansible-bench"  # on the hosts
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TICK = os.sysconf("SC_CLK_TCK")
GOAL_SPEEDUP = 10.0

# The service: listens on $HOST:$PORT at once, answers every connection with HTTP 200.
PROGRAM = '''\
#!/usr/bin/env python3
"""Bench service: listens on $HOST:$PORT, answers every connection with HTTP 200."""
import os
import socket

sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((os.environ["HOST"], int(os.environ["PORT"])))
sock.listen(128)
print("listening", flush=True)
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


def service_name(i: int) -> str:
    return f"svc{i + 1}"


def port_of(i: int) -> int:
    return FIRST_PORT + i


def machine_name(i: int) -> str:
    return f"h{i + 1:02d}"


# --- the reconciler under test -------------------------------------------------------------


def take_snapshot(ref: str | None) -> str:
    return snapshot.take_snapshot(SNAPSHOT_DIR, ref)


def venv_tool(name: str) -> str:
    """A console script beside this interpreter (not a shim on PATH)."""
    script = Path(sys.executable).parent / name
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: pip install -e '.[bench]'")
    return found


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "RECONCILER_"))}
    if env.pop("PYTHONDONTWRITEBYTECODE", None):
        env.setdefault("PYTHONPYCACHEPREFIX", str(OUT_DIR / "pycache"))
    if SNAPSHOT_DIR.exists():
        env["PYTHONPATH"] = os.pathsep.join(
            [str(SNAPSHOT_DIR), *filter(None, [env.get("PYTHONPATH")])]
        )
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


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, env=child_env(), capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


# --- the packages and the models -----------------------------------------------------------


def write_packages(root: Path) -> tuple[int, int]:
    """packages/svcN/{bin/svc, share/data-NN.txt}: (files, bytes)."""
    rng = random.Random(4)
    words = [
        bytes(rng.choices(b"etaoinshrdlucmfwypvbgkqjxz", k=rng.randint(2, 9))) for _ in range(3000)
    ]
    files = size = 0
    for i in range(SERVICES):
        pkg = root / service_name(i)
        program = pkg / "bin" / "svc"
        program.parent.mkdir(parents=True)
        program.write_text(PROGRAM)
        program.chmod(0o755)
        files, size = files + 1, size + len(PROGRAM)
        (pkg / "share").mkdir()
        for n in range(DATA_FILES):
            target = rng.randint(4 * 1024, 14 * 1024)
            text = b""
            while len(text) < target:
                line = b" ".join(rng.choices(words, k=12)) + b"\n"
                text += line
            (pkg / "share" / f"data-{n:02d}.txt").write_bytes(text)
            files, size = files + 1, size + len(text)
    return files, size


def write_models(repo: Path, hosts: Sequence[TestHost]) -> None:
    machines = {
        machine_name(i): {
            "deployment": {
                "targetEnv": "ssh",
                "maxParallel": SERVICES,
                "ssh": {
                    "host": h.address,
                    "identityFile": str(h.identity_file),
                    "hostKey": h.host_key,
                },
            }
        }
        for i, h in enumerate(hosts)
    }
    names = [machine_name(i) for i in range(len(hosts))]
    models = {
        "description": "bench/fanout.py: 8 services on every host",
        "machines": machines,
        "packages": {
            service_name(i): {"src": f"packages/{service_name(i)}"} for i in range(SERVICES)
        },
        "services": {
            service_name(i): {
                "package": service_name(i),
                "command": "bin/svc",
                "port": port_of(i),
                "healthCheck": {"tcp": True, "timeout": "10s"},
            }
            for i in range(SERVICES)
        },
        "distribution": {service_name(i): names for i in range(SERVICES)},
    }
    (repo / "models.yaml").write_text(json.dumps(models, indent=1))
    (repo / "reconciler.yaml").write_text(
        json.dumps({"deployments": {DEPLOYMENT: {"models": ["models.yaml"]}}}, indent=1)
    )


def make_repo(path: Path, hosts: Sequence[TestHost]) -> Path:
    """The models repository for these hosts (addresses and host keys are per network)."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    write_packages(path / "packages")
    write_models(path, hosts)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "fanout")
    return path


# --- ansible -------------------------------------------------------------------------------

LEAN = """\
- name: 8 services on every host (lean)
  hosts: bench
  gather_facts: false
  tasks:
    - name: copy the packages (one rsync per host)
      ansible.posix.synchronize:
        src: "{{ packages }}/"
        dest: "{{ root }}/packages/"
        use_ssh_args: true
        verify_host: true
        rsync_opts: [--mkpath]
    - name: start the services
      ansible.builtin.shell: |
        set -e
        for s in {{ services | map(attribute='spec') | join(' ') }}; do
          name=${s%:*}; port=${s#*:}
          mkdir -p {{ root }}/run/$name
          cd {{ root }}/run/$name
          HOST={{ ansible_host }} PORT=$port setsid nohup {{ root }}/packages/$name/bin/svc \\
            > log 2>&1 < /dev/null &
        done
    - name: wait for them to answer
      ansible.builtin.wait_for:
        host: "{{ ansible_host }}"
        port: "{{ item.port }}"
        timeout: 10
      loop: "{{ services }}"
"""

PER_SERVICE = """\
- name: 8 services on every host (service by service)
  hosts: bench
  gather_facts: false
  tasks:
    - name: copy each package
      ansible.posix.synchronize:
        src: "{{ packages }}/{{ item.name }}/"
        dest: "{{ root }}/packages/{{ item.name }}/"
        use_ssh_args: true
        verify_host: true
        rsync_opts: [--mkpath]
      loop: "{{ services }}"
    - name: start each service
      ansible.builtin.shell: |
        mkdir -p {{ root }}/run/{{ item.name }}
        cd {{ root }}/run/{{ item.name }}
        HOST={{ ansible_host }} PORT={{ item.port }} \\
          setsid nohup {{ root }}/packages/{{ item.name }}/bin/svc > log 2>&1 < /dev/null &
      loop: "{{ services }}"
    - name: wait for each to answer
      ansible.builtin.wait_for:
        host: "{{ ansible_host }}"
        port: "{{ item.port }}"
        timeout: 10
      loop: "{{ services }}"
"""

PLAYBOOKS = {"lean": LEAN, "per service": PER_SERVICE}


@dataclass
class AnsibleSetup:
    dir: Path
    control: Path  # ControlPath folder: the masters' sockets

    @property
    def env(self) -> dict[str, str]:
        env = child_env()
        env.update(
            ANSIBLE_CONFIG=str(self.dir / "ansible.cfg"),
            ANSIBLE_HOME=str(self.dir / "home"),
            ANSIBLE_LOCAL_TEMP=str(self.dir / "tmp"),
            # also where synchronize (run on the controller) stages its module; on the
            # hosts the same path lands in their private /tmp
            ANSIBLE_REMOTE_TEMP=str(self.dir / "remote-tmp"),
        )
        return env


def write_ansible(
    work: Path, hosts: Sequence[TestHost], net: TestHostNetwork, packages: Path
) -> AnsibleSetup:
    d = work / "ansible"
    d.mkdir(parents=True)
    control = Path(tempfile.mkdtemp(prefix="fanout-cp-"))  # short: socket paths ≤ 108 bytes
    ssh_args = " ".join(
        [
            "-F /dev/null -C -o ControlMaster=auto -o ControlPersist=60s",
            "-o KexAlgorithms=^curve25519-sha256",
            f"-o UserKnownHostsFile={net.known_hosts_file}",
            "-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes",
            "-o IdentitiesOnly=yes -o IdentityAgent=none",
        ]
    )
    (d / "ansible.cfg").write_text(
        "[defaults]\n"
        "inventory = inventory.ini\n"
        f"forks = {max(20, len(hosts))}\n"
        "host_key_checking = True\n"
        "gathering = explicit\n"
        "interpreter_python = /usr/bin/python3\n"
        "stdout_callback = ansible.posix.json\n"
        "retry_files_enabled = False\n"
        "deprecation_warnings = False\n"
        "\n[ssh_connection]\n"
        "pipelining = True\n"
        f"ssh_args = {ssh_args}\n"
        f"control_path_dir = {control}\n"
    )
    lines = ["[bench]"]
    lines += [f"{machine_name(i)} ansible_host={h.address}" for i, h in enumerate(hosts)]
    lines += [
        "",
        "[bench:vars]",
        "ansible_user=root",
        f"ansible_ssh_private_key_file={hosts[0].identity_file}",
        "ansible_python_interpreter=/usr/bin/python3",
    ]
    (d / "inventory.ini").write_text("\n".join(lines) + "\n")
    variables = {
        "packages": str(packages),
        "root": ANSIBLE_ROOT,
        "services": [
            {"name": service_name(i), "port": port_of(i), "spec": f"{service_name(i)}:{port_of(i)}"}
            for i in range(SERVICES)
        ],
    }
    (d / "vars.json").write_text(json.dumps(variables, indent=1))
    for name, text in PLAYBOOKS.items():
        (d / f"{name.replace(' ', '-')}.yml").write_text(text)
    return AnsibleSetup(d, control)


def stop_masters(setup: AnsibleSetup) -> None:
    """Stop ansible's ControlPersist masters (they would linger 60 s), then anything left
    whose command line names our control folder: processes we started, by pid."""
    for sock in setup.control.iterdir() if setup.control.exists() else []:
        subprocess.run(
            ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    needle = str(setup.control).encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in Path(f"/proc/{name}/cmdline").read_bytes():
                os.kill(int(name), signal.SIGTERM)
    shutil.rmtree(setup.control, ignore_errors=True)


# --- measuring -----------------------------------------------------------------------------


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_stat() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # [0] is field 3 (state) of proc(5)


def hosts_cpu(net: TestHostNetwork) -> float:
    """CPU seconds of every finished ssh session of the hosts (sshd, shells, python3, rsync,
    tar …), as collected by each sshd listener (cutime + cstime); waits (up to 5 s) until no
    session process is left. The services stay running: their CPU is not in it."""
    listeners = [net._listener_pid(net._state(h)) for h in net.hosts]  # private, but needed
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        sessions = False
        for name in os.listdir("/proc"):
            f = _stat_fields(int(name)) if name.isdigit() else None
            if f and int(f[1]) in listeners:
                with contextlib.suppress(OSError):
                    comm = Path(f"/proc/{name}/comm").read_text().strip()
                    sessions = sessions or comm.startswith("sshd")
        if not sessions:
            break
        time.sleep(0.05)
    total = 0.0
    for pid in listeners:
        f = _stat_fields(pid)
        if f:
            total += (int(f[13]) + int(f[14])) / TICK
    return total


def calibrate_sessions(work: Path, repeat: int = 20) -> list[tuple[str, float]]:
    """Host CPU per command run over one OpenSSH connection (the connection's set-up
    shared by the 20 commands), as the sshd listener collects it once the connection has
    closed; on a fresh host of its own."""
    agent = SNAPSHOT_DIR / "reconciler" / "activation" / "agent.py"
    commands = [
        ("a session running `true`", "true"),
        ("`python3 -c pass`", "python3 -c pass"),
        ("`python3 agent.py` with an unknown command", "python3 /tmp/agent.py nosuch"),
    ]
    out = []
    control = Path(tempfile.mkdtemp(prefix="fanout-cal-"))
    try:
        with TestHostNetwork(1, work / "calibration") as net:
            host = net.hosts[0]
            shutil.copy(agent, host.var_lib.parent / "tmp" / "agent.py")
            ssh = host.ssh_command()
            for label, command in commands:
                sock = control / "m"
                base = [*ssh[:-1], "-o", "ControlMaster=auto", "-o", f"ControlPath={sock}",
                        "-o", "ControlPersist=30", ssh[-1]]  # fmt: skip
                before = hosts_cpu(net)  # no session open: the first command opens it
                for _ in range(repeat):
                    subprocess.run([*base, "--", command], capture_output=True, check=False)
                subprocess.run(
                    [*ssh[:-1], "-o", f"ControlPath={sock}", "-O", "exit", ssh[-1]],
                    capture_output=True,
                    check=False,
                )
                out.append((label, (hosts_cpu(net) - before) / repeat))
    finally:
        stop_masters(AnsibleSetup(control, control))
    return out


@dataclass
class Outcome:
    tool: str  # "reconciler" or "ansible, lean" …
    wall: float
    cpu_controller: float
    cpu_hosts: float
    busy: float  # share of all cores busy during the run
    phases: list[tuple[str, float]] = field(default_factory=list)
    answering: int = 0
    files_ok: bool = False


def check_ports(hosts: Sequence[TestHost]) -> int:
    """How many of the hosts × services ports accept a connection (from the root netns)."""
    ok = 0
    for h in hosts:
        for i in range(SERVICES):
            with (
                contextlib.suppress(OSError),
                socket.create_connection((h.address, port_of(i)), timeout=2),
            ):
                ok += 1
    return ok


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def check_files(packages: Path, host: TestHost, tool: str) -> bool:
    """One host's copy of every package has exactly the source files."""
    for i in range(SERVICES):
        name = service_name(i)
        if tool == "reconciler":
            found = list((host.var_lib / "reconciler" / "store").glob(f"*-{name}"))
            if len(found) != 1:
                return False
            copy = found[0]
        else:
            copy = host.var_lib / ANSIBLE_ROOT.removeprefix("/var/lib/") / "packages" / name
        if tree(copy) != tree(packages / name):
            return False
    return True


def stamp(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def transfers_done(hosts: Sequence[TestHost]) -> float:
    """When the last store path landed on any host: each is renamed into place when its
    tar stream has been unpacked, which sets its ctime."""
    times = [
        p.stat().st_ctime
        for h in hosts
        for p in (h.var_lib / "reconciler" / "store").iterdir()
        if not p.name.startswith(".")
    ]
    return max(times)


def reconciler_phases(
    state: Path, t0: float, t1: float, transferred: float
) -> list[tuple[str, float]]:
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        attempt, started = db.execute(
            "SELECT id, started_at FROM attempts WHERE deployment = ? ORDER BY started_at DESC "
            "LIMIT 1",
            [DEPLOYMENT],
        ).fetchone()
        rows = db.execute(
            "SELECT action, at FROM journal WHERE attempt_id = ? AND step = 'transition'",
            [attempt],
        ).fetchall()
    finally:
        db.close()
    profiles = [stamp(at) for action, at in rows if action == "switch-profile"]
    activations = [stamp(at) for action, at in rows if action == "activate"]
    first_profile = min(profiles)  # when the first switch-profile ended
    return [
        ("start-up, models, plan", stamp(started) - t0),
        ("build, transfer (until the last path landed)", transferred - stamp(started)),
        (
            f"start the agents, lock {len(profiles)} machines one by one, first switch-profile",
            first_profile - transferred,
        ),
        ("switch the other profiles", max(profiles) - first_profile),
        (f"activate {len(activations)} instances", max(activations) - max(profiles)),
        ("record, unlock, exit", t1 - max(activations)),
    ]


def ansible_phases(stdout: str) -> list[tuple[str, float]]:
    """Per task: first host's start to last host's end, from the json callback."""
    try:
        doc = json.loads(stdout[stdout.index("{") :])
    except ValueError:
        return []
    out = []
    for play in doc.get("plays", []):
        for task in play.get("tasks", []):
            dur = task.get("task", {}).get("duration", {})
            if dur.get("start") and dur.get("end"):
                seconds = stamp(dur["end"]) - stamp(dur["start"])
                out.append((task["task"]["name"], seconds))
    return out


def failed_hosts(stdout: str) -> str:
    with contextlib.suppress(ValueError):
        doc = json.loads(stdout[stdout.index("{") :])
        stats = doc.get("stats", {})
        bad = {h: s for h, s in stats.items() if s.get("failures") or s.get("unreachable")}
        return json.dumps(bad)[:500]
    return ""


def run_reconciler(
    hosts: Sequence[TestHost], net: TestHostNetwork, work: Path, packages: Path
) -> Outcome:
    repo = make_repo(work / "models", hosts)
    state = work / "state" / "state.db"
    cmd = [
        venv_tool("reconciler"), "--repo", str(repo), "--state", str(state), "-d", DEPLOYMENT,
        "apply", "--yes", "--format", "json", "--max-concurrent", str(max(20, len(hosts))),
    ]  # fmt: skip
    host0, cpu0, stat0 = hosts_cpu(net), children_cpu(), cpu_stat()
    t0 = time.time()
    done = subprocess.run(
        cmd, env=child_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    t1 = time.time()
    cpu, stat1 = children_cpu() - cpu0, cpu_stat()
    if done.returncode != 0:
        raise RuntimeError(f"reconciler apply exited {done.returncode}:\n{done.stderr[-3000:]}")
    out = Outcome(
        "reconciler",
        t1 - t0,
        cpu,
        hosts_cpu(net) - host0,
        (stat1[0] - stat0[0]) / max(1, stat1[1] - stat0[1]),
        reconciler_phases(state, t0, t1, transfers_done(hosts)),
    )
    out.answering = check_ports(hosts)
    out.files_ok = check_files(packages, hosts[0], "reconciler")
    return out


def run_ansible(
    hosts: Sequence[TestHost], net: TestHostNetwork, work: Path, packages: Path, playbook: str
) -> Outcome:
    setup = write_ansible(work, hosts, net, packages)
    try:
        cmd = [
            venv_tool("ansible-playbook"),
            "-e", f"@{setup.dir / 'vars.json'}",
            str(setup.dir / f"{playbook.replace(' ', '-')}.yml"),
        ]  # fmt: skip
        host0, cpu0, stat0 = hosts_cpu(net), children_cpu(), cpu_stat()
        t0 = time.time()
        done = subprocess.run(
            cmd, cwd=setup.dir, env=setup.env, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=1200,
        )  # fmt: skip
        t1 = time.time()
        cpu, stat1 = children_cpu() - cpu0, cpu_stat()
        if done.returncode != 0:
            raise RuntimeError(
                f"ansible-playbook ({playbook}) exited {done.returncode}: "
                f"{failed_hosts(done.stdout)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )
        stop_masters(setup)  # closes the sessions, so the hosts' CPU of them is collected
        out = Outcome(
            f"ansible, {playbook}",
            t1 - t0,
            cpu,
            hosts_cpu(net) - host0,
            (stat1[0] - stat0[0]) / max(1, stat1[1] - stat0[1]),
            ansible_phases(done.stdout),
        )
    finally:
        stop_masters(setup)
    out.answering = check_ports(hosts)
    out.files_ok = check_files(packages, hosts[0], "ansible")
    return out


def one_run(
    tool: str, count: int, work: Path, packages: Path, log: Callable[[str], None]
) -> Outcome:
    """Fresh hosts, one tool, then the hosts (and everything they run) are torn down."""
    work.mkdir(parents=True)
    with TestHostNetwork(count, work / "net") as net:
        hosts = net.hosts
        if tool == "reconciler":
            out = run_reconciler(hosts, net, work, packages)
        else:
            out = run_ansible(hosts, net, work, packages, tool.removeprefix("ansible, "))
    log(
        f"{out.tool}: {out.wall:.2f} s, CPU controller {out.cpu_controller:.1f} s, hosts "
        f"{out.cpu_hosts:.1f} s, {out.answering}/{count * SERVICES} answering, files "
        f"{'ok' if out.files_ok else 'DIFFERENT'}"
    )
    if out.answering != count * SERVICES or not out.files_ok:
        raise RuntimeError(f"{out.tool} did not reach the end state: {out}")
    return out


# --- reporting -----------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def best(outs: Sequence[Outcome]) -> Outcome:
    return min(outs, key=lambda o: o.wall)


def versions() -> str:
    def first_line(argv: list[str], env: dict[str, str] | None = None) -> str:
        with contextlib.suppress(OSError):
            done = subprocess.run(argv, capture_output=True, text=True, env=env or child_env())
            return (done.stdout or done.stderr).strip().splitlines()[0]
        return "?"

    import asyncssh

    with tempfile.TemporaryDirectory(prefix="fanout-ansible-") as home:
        env = dict(child_env(), ANSIBLE_HOME=home, ANSIBLE_LOCAL_TEMP=home)
        ansible = first_line([venv_tool("ansible-playbook"), "--version"], env)
    return (
        f"{ansible}, {first_line(['ssh', '-V'])}, {first_line(['rsync', '--version'])}, "
        f"asyncssh {asyncssh.__version__}"
    )


def report(
    command: str,
    version: str,
    facts: str,
    seconds: float,
    outcomes: dict[str, list[Outcome]],
    count: int,
    repeat: int,
    files: tuple[int, int],
    calibration: list[tuple[str, float]],
) -> str:
    now = dt.datetime.now(dt.UTC).isoformat(timespec="minutes")
    rec = best(outcomes["reconciler"])
    lines = [
        SECTION,
        "",
        "<!-- Written by `bench/fanout.py --write-results`; a new run replaces this section. -->",
        "",
        f"Date: {now}. Machine: {facts}.",
        "",
        f"Measured: reconciler at {version}.",
        "",
        f"Command: `{command}` — {seconds:.0f} s in all, best of {repeat} run"
        f"{'s' * (repeat != 1)} per tool (tools alternate). Every run starts {count} fresh "
        "OpenSSH test hosts (tests/testhosts.py: sshd in network namespaces on this "
        "machine, sharing its cores) and ends by checking all "
        f"{count * SERVICES} ports from the root namespace and one host's files against the "
        "sources.",
        "",
        f"The system: {SERVICES} independent services, each its own package (a Python program "
        f"that listens at once, plus {DATA_FILES} data files): {files[0]} files, "
        f"{files[1] / 1000:,.0f} kB; every service on every host ({count * SERVICES} "
        "instances).",
        "",
        f"- *reconciler*: `reconciler --repo DIR --state DB -d {DEPLOYMENT} apply --yes "
        f"--format json --max-concurrent {max(20, count)}` from a fresh state DB (building the "
        f"{SERVICES} packages from Git included), `targetEnv: ssh` machines with "
        f"`maxParallel: {SERVICES}`, health check `tcp: true`.",
        "- *ansible*: `ansible-playbook -e @vars.json PLAYBOOK` with forks "
        f"{max(20, count)}, pipelining on, ControlPersist 60 s (the default ssh_args plus the "
        "test hosts' key exchange and known_hosts), `gathering = explicit` (no facts). *lean*: "
        "`ansible.posix.synchronize` of the packages folder (one rsync per host, over the "
        "ssh args), one `shell` task starting all 8 programs (`setsid nohup … &`), "
        "`wait_for` each port (loop of 8). *per service*: loops of 8 `synchronize`, 8 `shell` "
        "starts, 8 `wait_for` — a playbook written service by service.",
        "",
        "| tool | wall s | slowest run s | vs reconciler | CPU s: controller | CPU s: hosts "
        "| cores busy |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for tool, outs in outcomes.items():
        b = best(outs)
        ratio = f"{b.wall / rec.wall:.1f}×" if tool != "reconciler" else ""
        lines.append(
            f"| {tool} | {b.wall:.2f} | {max(o.wall for o in outs):.2f} | {ratio} "
            f"| {b.cpu_controller:.1f} | {b.cpu_hosts:.1f} | {b.busy:.0%} |"
        )
    lines += ["", "Where the time goes (best runs):", ""]
    for tool, outs in outcomes.items():
        b = best(outs)
        what = "journal" if tool == "reconciler" else "json callback, per task"
        lines.append(
            f"- {tool} ({what}): "
            + "; ".join(f"{name} {ms(s)} ms" for name, s in b.phases)
            + f" — {ms(b.wall)} ms in all."
        )
    cores = len(os.sched_getaffinity(0))
    instances = count * SERVICES
    for tool, outs in outcomes.items():
        b = best(outs)
        total = b.cpu_controller + b.cpu_hosts
        lines.append(
            f"- {tool}: {total:.1f} CPU s in all ({b.cpu_controller:.1f} on the controller, "
            f"{b.cpu_hosts:.1f} in the hosts' ssh sessions = {ms(b.cpu_hosts / instances)} ms "
            f"per instance); spread over the {cores} cores everything shares, that alone "
            f"takes {total / cores:.1f} s of the {b.wall:.1f} s wall."
        )
    lines.append(
        "- Host CPU per command over one open SSH connection (mean of 20, on a fresh host): "
        + "; ".join(f"{label} {ms(cpu)} ms" for label, cpu in calibration)
        + ". reconciler runs per machine a store query and the tar stream, then one agent "
        "process (`agent.py serve`) for the whole transition, started on every machine at "
        "once, which takes lock, switch-profile, each activate (a thread that also starts "
        "the program) and unlock as lines over one SSH channel."
    )
    lines += [
        "",
        f"The hosts are namespaces on this machine: the tools, the {count} sshds and everything "
        "they run share its cores, so the wall time follows CPU time, and the ratio of wall "
        "times is close to the ratio of CPU spent. On real machines the hosts' share would "
        "run on their own CPUs.",
        "",
        "### Goals",
        "",
    ]
    for tool, outs in outcomes.items():
        if tool == "reconciler":
            continue
        ratio = best(outs).wall / rec.wall
        lines.append(
            f"- reconciler ≥ {GOAL_SPEEDUP:g}× faster than {tool} — "
            f"{verdict(ratio >= GOAL_SPEEDUP)} ({ratio:.1f}×: {rec.wall:.2f} s vs "
            f"{best(outs).wall:.2f} s)"
        )
    return "\n".join(lines) + "\n"


def machine_facts(load: str) -> str:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"nproc {len(os.sched_getaffinity(0))} ({cpu}), load average {load} at the start, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}; "
        f"{versions()}"
    )


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Deploy 8 services fresh to 20 SSH test hosts with reconciler and with "
        "ansible-playbook; compare wall times."
    )
    p.add_argument("--quick", action="store_true", help="one run each, lean playbook only")
    p.add_argument("--repeat", type=int, help="runs per tool, best kept (2; quick 1)")
    p.add_argument("--hosts", type=int, default=20, help="test hosts (20)")
    p.add_argument(
        "--per-service",
        action="store_true",
        help="also the service-by-service playbook (slow)",
    )
    p.add_argument(
        "--at",
        metavar="REF",
        help="measure reconciler/ as committed at REF (default: the tree as it is now)",
    )
    p.add_argument(
        "--write-results", action="store_true", help=f"write {SECTION} of bench/RESULTS.md"
    )
    args = p.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 2)
    if args.repeat < 1 or args.hosts < 1:
        p.error("--repeat and --hosts must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    if os.geteuid() != 0:
        raise SystemExit("needs root: the test hosts are network namespaces")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    facts = machine_facts(load)
    version = take_snapshot(args.at)
    log(f"measuring reconciler at {version}")
    tools = ["reconciler", "ansible, lean"]
    if args.per_service and not args.quick:
        tools.append("ansible, per service")
    outcomes: dict[str, list[Outcome]] = {t: [] for t in tools}
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        work = Path(tmp)
        packages = work / "packages"
        files = write_packages(packages)
        calibration = calibrate_sessions(work)
        log("host CPU per command: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in calibration))
        for round_ in range(args.repeat):
            order = tools if round_ % 2 == 0 else [tools[1], tools[0], *tools[2:]]
            for tool in order:
                slug = tool.replace(", ", "-").replace(" ", "-")
                outcomes[tool].append(
                    one_run(tool, args.hosts, work / f"{slug}-{round_}", packages, log)
                )
        # read-only store paths: as root, the temporary folder is removed all the same
    command = shlex.join(
        ["python3", "bench/fanout.py", *(argv if argv is not None else sys.argv[1:])]
    )
    text = report(
        command,
        version,
        facts,
        time.monotonic() - started,
        outcomes,
        args.hosts,
        args.repeat,
        files,
        calibration,
    )
    print(text)
    if args.write_results:
        write_section(RESULTS_FILE, SECTION, text)
        log(f"wrote {SECTION!r} in {RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
