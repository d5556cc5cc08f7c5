"""Store and transfer over real SSH: three sshd hosts in network namespaces (SPEC §3
steps 2-3). Only missing closure paths travel; an interrupted stream leaves nothing
half-made; a host key that does not match is refused."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from reconciler.state.db import open_db
from reconciler.state.hostkeys import RecordedHostKeys
from reconciler.targets.ssh import SshEndpoint, SshTarget
from tests.support import RECONCILER, clean_env, commit, make_repo, run_cli
from tests.testhosts import TestHost, TestHostNetwork

pytestmark = [pytest.mark.hosts, pytest.mark.slow]

STORE = "reconciler/store"  # under each host's /var/lib


def models(hosts: list[TestHost], pin: dict[str, str] | None = None) -> dict[str, str]:
    machines = {}
    for i, h in enumerate(hosts):
        ssh: dict[str, Any] = {"host": h.address, "identityFile": str(h.identity_file)}
        if pin and f"h{i}" in pin:
            ssh["hostKey"] = pin[f"h{i}"]
        machines[f"h{i}"] = {
            "packages": ["tools"],
            "deployment": {"targetEnv": "ssh", "ssh": ssh},
        }
    return {
        "reconciler.yaml": "deployments:\n  fleet:\n    models: [network.yaml, services.yaml]\n",
        "network.yaml": json.dumps({"machines": machines}),
        "services.yaml": json.dumps(
            {
                "packages": {
                    "lib": {"src": "src/lib"},
                    "app": {"src": "src/app", "deps": ["lib"]},
                    "tools": {"src": "src/tools"},
                },
                "services": {"app": {"package": "app", "command": "bin/app", "port": 8080}},
                "distribution": {"app": [f"h{i}" for i in range(len(hosts))]},
            }
        ),
        "src/lib/data.txt": "library v1\n" * 4000,
        "src/app/bin/app": "#!/bin/sh\necho app\n",
        "src/tools/bin/tool": "#!/bin/sh\necho tool\n",
    }


def repo_of(path: Path, files: Mapping[str, str | None]) -> Path:
    repo = make_repo(path, files)
    (repo / "src/app/bin/app").chmod(0o755)  # executables stay executable in the store
    commit(repo, {}, "make bin/app executable")
    return repo


def copy(repo: Path, *extra: str) -> dict[str, Any]:
    done = run_cli("-d", "fleet", "apply", "--copy-only", "--format", "json", *extra, cwd=repo)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def store_paths(host: TestHost) -> set[str]:
    store = host.var_lib / STORE
    return (
        {p.name for p in store.iterdir() if not p.name.startswith(".")} if store.exists() else set()
    )


@pytest.fixture
def three(ssh_network_factory: Callable[[int], TestHostNetwork]) -> TestHostNetwork:
    return ssh_network_factory(3)


def test_closure_reaches_every_host_and_a_second_run_sends_nothing(
    three: TestHostNetwork, tmp_path: Path
) -> None:
    repo = repo_of(tmp_path / "models", models(three.hosts))
    first = copy(repo)
    assert len(first["built"]) == 3
    for i, host in enumerate(three.hosts):
        sent = set(first["transfers"][f"h{i}"]["sent"])
        assert {p.split("-", 1)[1] for p in sent} == {"lib", "app", "tools", "reconciler-agent"}
        assert store_paths(host) == sent
        app = next(p for p in sent if p.endswith("-app"))
        assert (host.var_lib / STORE / app / "bin/app").read_text() == "#!/bin/sh\necho app\n"
        assert os.access(host.var_lib / STORE / app / "bin/app", os.X_OK)
        assert (host.var_lib / STORE / ".meta" / f"{app}.json").exists()
    again = copy(repo)
    assert again["built"] == []
    assert all(t["sent"] == [] and t["wireBytes"] == 0 for t in again["transfers"].values())
    plan = json.loads(run_cli("-d", "fleet", "plan", "--format", "json", cwd=repo).stdout)
    assert plan["transfers"] == []


def test_a_changed_package_sends_only_its_path_and_its_dependents(
    three: TestHostNetwork, tmp_path: Path
) -> None:
    files = models(three.hosts)
    repo = repo_of(tmp_path / "models", files)
    before = copy(repo)
    commit(repo, {"src/lib/data.txt": "library v2\n" * 4000})
    after = copy(repo)
    assert sorted(after["built"]) == ["app", "lib"]
    for i, host in enumerate(three.hosts):
        t = after["transfers"][f"h{i}"]
        assert {p.split("-", 1)[1] for p in t["sent"]} == {"lib", "app"}
        assert not set(t["sent"]) & set(before["transfers"][f"h{i}"]["sent"])
        assert t["wireBytes"] <= 1.1 * t["size"] + 64 * 1024
        # the old paths stay (immutable, collected later by gc); the new ones are complete
        assert set(t["sent"]) <= store_paths(host)
        lib = next(p for p in t["sent"] if p.endswith("-lib"))
        assert (host.var_lib / STORE / lib / "data.txt").read_text().startswith("library v2")


def test_a_host_key_that_does_not_match_is_refused(three: TestHostNetwork, tmp_path: Path) -> None:
    wrong = {"h0": three.hosts[1].host_key}  # h0 pinned to another machine's key
    repo = repo_of(tmp_path / "models", models(three.hosts[:2], pin=wrong))
    done = run_cli("-d", "fleet", "apply", "--copy-only", cwd=repo)
    assert done.returncode == 1
    assert "h0: transfer failed: host key of" in done.stderr
    assert "does not match" in done.stderr
    assert "Traceback" not in done.stderr
    assert store_paths(three.hosts[0]) == set()
    assert len(store_paths(three.hosts[1])) == 4  # the other machine went ahead (+ the agent)


def test_a_first_seen_host_key_is_recorded_and_then_enforced(
    three: TestHostNetwork, tmp_path: Path
) -> None:
    repo = repo_of(tmp_path / "models", models(three.hosts[:1]))
    copy(repo)
    db = repo / ".reconciler" / "state.db"
    row = subprocess.run(
        ["sqlite3", str(db), "SELECT host, key FROM host_keys"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert row == f"{three.hosts[0].address}|{three.hosts[0].host_key}"
    # the machine is re-keyed (or another one answers at its address): refused
    subprocess.run(
        ["sqlite3", str(db), "UPDATE host_keys SET key = 'ssh-ed25519 AAAAother'"], check=True
    )
    done = run_cli("-d", "fleet", "apply", "--copy-only", cwd=repo)
    assert done.returncode == 1
    assert "recorded when first connected" in done.stderr


@pytest.mark.parametrize("pin", [False, True], ids=["asyncssh query", "one OpenSSH session"])
def test_an_interrupted_transfer_leaves_no_partial_path_and_the_next_run_completes(
    three: TestHostNetwork, tmp_path: Path, pin: bool
) -> None:
    """Either way: the asyncssh connection's query then the stream, or (the host key
    known before connecting) both in one session of the OpenSSH client."""
    host = three.hosts[0]
    repo = repo_of(tmp_path / "models", models([host], pin={"h0": host.host_key} if pin else None))
    big = repo / "src/lib/big.bin"
    big.write_bytes(os.urandom(12 * 2**20))  # incompressible, 12 MiB
    commit(repo, {})
    three.throttle(host, "40mbit")  # about 2.5 s on the wire: time to cut it
    apply = subprocess.Popen(
        [RECONCILER, "-d", "fleet", "apply", "--copy-only", "--format", "json"],
        cwd=repo,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    incoming = host.var_lib / STORE / ".incoming"
    deadline = time.monotonic() + 30
    while not (incoming.exists() and any(incoming.iterdir())):
        assert time.monotonic() < deadline, "the transfer never started"
        assert apply.poll() is None, apply.communicate()
        time.sleep(0.02)
    time.sleep(0.3)
    three.kill_sshd_sessions(host)
    _, err = apply.communicate(timeout=60)
    assert apply.returncode == 1, err
    assert "h0: transfer failed" in err and "Traceback" not in err
    lib_paths = [p for p in store_paths(host) if p.endswith("-lib")]
    assert lib_paths == [], "a partial path became visible"
    three.throttle(host, None)
    result = copy(repo)
    lib = next(p for p in result["transfers"]["h0"]["sent"] if p.endswith("-lib"))
    assert (host.var_lib / STORE / lib / "big.bin").read_bytes() == big.read_bytes()
    assert not any(incoming.iterdir()), "the finished transfer left its incoming folder"


def test_the_stream_client_reaches_only_the_machine_the_connection_verified(
    three: TestHostNetwork, tmp_path: Path
) -> None:
    """Bulk streams go through the OpenSSH client: same key, same user, and only the host
    key the asyncssh connection verified (here: trusted on first use) is accepted."""
    host, other = three.hosts[0], three.hosts[1]
    db = open_db(tmp_path / "state.db", write=True)
    assert db is not None
    endpoint = SshEndpoint(host.address, host.port, host.user, str(host.identity_file), None)
    target = SshTarget("h0", "/var/lib/reconciler", endpoint, RecordedHostKeys(db))

    Done = subprocess.CompletedProcess[str]

    async def attempt() -> tuple[list[str], Done, Done]:
        try:
            await target.check("true")
            argv = await target.openssh_command("hostname")
            assert argv is not None
            same = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            elsewhere = [other.address if a == host.address else a for a in argv]
            imposter = subprocess.run(elsewhere, capture_output=True, text=True, timeout=30)
            return argv, same, imposter
        finally:
            await target.close()

    argv, same, imposter = asyncio.run(attempt())
    assert (same.returncode, same.stdout) == (0, f"{host.name}\n")
    assert imposter.returncode == 255
    assert "Host key verification failed" in imposter.stderr
    known_hosts = next(a.split("=", 1)[1] for a in argv if a.startswith("UserKnownHostsFile="))
    assert not os.path.exists(known_hosts), "the client's known_hosts outlived the target"


def test_an_openssh_client_that_cannot_start_leaves_the_stream_to_the_connection(
    three: TestHostNetwork, tmp_path: Path
) -> None:
    """~/.ssh/config is read by both clients; a setting only OpenSSH rejects stops it before
    it reaches the machine, and the paths travel over the asyncssh connection instead."""
    host = three.hosts[0]
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("IPQoS nonsense\n")
    repo = repo_of(tmp_path / "models", models([host]))
    done = run_cli(
        "-d", "fleet", "apply", "--copy-only", "--format", "json",
        cwd=repo, env=clean_env(HOME=str(home)),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sent = json.loads(done.stdout)["transfers"]["h0"]["sent"]
    lib = next(p for p in sent if p.endswith("-lib"))
    assert (host.var_lib / STORE / lib / "data.txt").read_text() == "library v1\n" * 4000
    assert store_paths(host) == set(sent)
