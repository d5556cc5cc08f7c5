"""StaffTracker deployed over real SSH to two test hosts in their own network namespaces:
the front end on one machine calls services on the other across the bridge."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.apply.test_apply_local import example_files, example_repo, get
from tests.support import run_cli
from tests.testhosts import TestHostNetwork

pytestmark = [pytest.mark.hosts, pytest.mark.slow]


def test_stafftracker_over_ssh(
    ssh_network_factory: Callable[[int], TestHostNetwork], tmp_path: Path
) -> None:
    net = ssh_network_factory(2)
    machines = {f"test{i + 1}": {"deployment": h.deployment()} for i, h in enumerate(net.hosts)}
    physical = {"machines": machines}
    files = example_files()
    files["network/physical-ssh.yaml"] = json.dumps(physical)
    files["reconciler.yaml"] = (
        "deployments:\n  ssh:\n    models: [network/logical.yaml, network/physical-ssh.yaml,"
        " services.yaml, distribution.yaml]\n"
    )
    repo = example_repo(tmp_path / "models", files)

    done = run_cli("-d", "ssh", "apply", "--yes", "--format", "json", cwd=repo, timeout=180)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    front = result["endpoints"]["stafftracker@test1"]
    assert front.startswith(f"http://{net.hosts[0].address}:")
    rows = get(f"{front}/api/staff")["staff"]
    assert rows and all(r.get("city") for r in rows)  # zipcodes come from test2
    state = net.hosts[1].var_lib / "reconciler/deployments/ssh"
    assert (state / "state/zipcode-db/zipcode-db.sqlite").exists()
    assert json.loads((state / "manifest.json").read_text())["generation"] == 1

    # `reconciler ssh`: a command on the machine, from its stateDir, with its exit status
    shown = run_cli(
        "-d", "ssh", "ssh", "test2", "--", "cat", "deployments/ssh/manifest.json", cwd=repo
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["machine"] == "test2"
    failed = run_cli("-d", "ssh", "ssh", "test1", "--", "sh", "-c", "exit 7", cwd=repo)
    assert failed.returncode == 7

    gone = run_cli("-d", "ssh", "destroy", "--yes", cwd=repo, timeout=120)
    assert gone.returncode == 0, gone.stderr
    assert not (state / "current").exists()
    for host in net.hosts:
        left = host.run("pgrep -f '[/]var/lib/reconciler/store' || true").stdout.split()
        assert left == [], left
