"""Provisioning through the command line: `apply --provision-only` of two EC2 machines
against moto (a second apply creates none; a region change is refused; destroy
terminates them), and example-repo's `containers` deployment provisioned, deployed over
SSH, serving its front end, then destroyed without a trace."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.apply.test_apply_local import example_files, example_repo
from tests.provision.conftest import REGION
from tests.support import commit, make_repo, run_cli

pytestmark = pytest.mark.slow


def ec2_models(settings: dict[str, Any]) -> dict[str, str]:
    machines = {
        name: {"deployment": {"targetEnv": "ec2", "ssh": {"user": "ec2-user"}, "ec2": settings}}
        for name in ("web1", "web2")
    }
    return {
        "reconciler.yaml": "deployments:\n  cloud:\n    models: [machines.yaml]\n",
        "machines.yaml": json.dumps({"machines": machines}),
    }


def instances() -> list[dict[str, Any]]:
    client = boto3.client("ec2", region_name=REGION)
    found = client.describe_instances(
        Filters=[
            {"Name": "tag:reconciler:deployment", "Values": ["cloud"]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    return [i for r in found["Reservations"] for i in r["Instances"]]


def test_ec2_machines_are_provisioned_once_and_destroyed(aws: str, tmp_path: Path) -> None:
    client = boto3.client("ec2", region_name=REGION)
    ami = client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    client.create_key_pair(KeyName="deploy")
    settings = {"region": REGION, "ami": ami, "instanceType": "t3.micro", "keyPair": "deploy"}
    repo = make_repo(tmp_path / "models", ec2_models(settings))
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}

    plan = run_cli("plan", cwd=repo, env=env)
    assert "(known after apply)" in plan.stdout
    first = run_cli("apply", "--provision-only", "--yes", cwd=repo, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    made = instances()
    assert len(made) == 2
    status = json.loads(run_cli("status", "--format", "json", cwd=repo, env=env).stdout)
    ids = {m["name"]: m["providerId"] for m in status["machines"]}
    assert ids == {
        t["Value"]: f"{REGION}/{i['InstanceId']}"
        for i in made
        for t in i["Tags"]
        if t["Key"] == "reconciler:machine"
    }
    again = run_cli("apply", "--provision-only", "--yes", cwd=repo, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert sorted(i["InstanceId"] for i in instances()) == sorted(i["InstanceId"] for i in made)
    addresses = run_cli("plan", "--format", "json", cwd=repo, env=env).stdout
    assert all(i["PrivateIpAddress"] in addresses for i in made)  # known now

    commit(repo, ec2_models({**settings, "region": "eu-west-1"}), "move to Europe")
    refused = run_cli("apply", "--provision-only", "--yes", cwd=repo, env=env)
    assert refused.returncode == 1
    assert "ec2.region us-east-1 → eu-west-1" in refused.stdout + refused.stderr
    assert "--allow-recreate" in refused.stdout + refused.stderr
    assert len(instances()) == 2

    gone = run_cli("-d", "cloud", "destroy", "--yes", cwd=repo, env=env, timeout=120)
    assert gone.returncode == 0, gone.stderr
    assert instances() == []


@pytest.mark.hosts
def test_the_containers_deployment_serves_and_leaves_nothing_behind(tmp_path: Path) -> None:
    files = example_files()
    physical = files["network/physical-containers.yaml"]
    spare = "  spare:\n    deployment: {targetEnv: container, container: {}}\n"
    files["network/physical-containers.yaml"] = physical + spare
    repo = example_repo(tmp_path / "models", files)
    state = tmp_path / "state" / "state.db"
    args = ("--state", str(state), "-d", "containers")
    done = run_cli(*args, "apply", "--yes", "--format", "json", cwd=repo, timeout=300)
    try:
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        front = result["endpoints"]["stafftracker@test1"]
        assert front.startswith("http://10.213.")
        with urllib.request.urlopen(f"{front}/api/staff", timeout=10) as answer:
            staff = json.loads(answer.read())["staff"]
        assert staff and all(r.get("city") for r in staff)  # zipcodes come from test2
        status = json.loads(run_cli(*args, "status", "--format", "json", cwd=repo).stdout)
        assert {m["providerState"] for m in status["machines"]} == {"running"}
        again = run_cli(*args, "apply", "--yes", cwd=repo, timeout=300)
        assert "No changes" in again.stdout, again.stderr
        # a machine removed from the model is only listed as obsolete...
        spare_id = next(m["providerId"] for m in status["machines"] if m["name"] == "spare")
        commit(repo, {"network/physical-containers.yaml": physical}, "no spare machine")
        plan = run_cli(*args, "plan", cwd=repo).stdout
        assert "spare" in plan and "obsolete" in plan
        kept = run_cli(*args, "apply", "--yes", cwd=repo, timeout=300)
        assert kept.returncode == 0, kept.stderr
        assert spare_id in subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
        # ...until --kill-obsolete (or destroyMachines: true)
        killed = run_cli(*args, "apply", "--yes", "--kill-obsolete", cwd=repo, timeout=300)
        assert killed.returncode == 0, killed.stderr
        assert "Destroyed machine spare." in killed.stderr
        netns = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
        assert spare_id not in netns
    finally:
        gone = run_cli(*args, "destroy", "--yes", cwd=repo, timeout=300)
    assert gone.returncode == 0, gone.stderr
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    ids = [m["providerId"] for m in status["machines"]]
    assert not [i for i in ids if i in netns]
    left = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True
    ).stdout.split()
    assert left == []
    assert not list((state.parent / "containers").glob("containers/*/root"))
