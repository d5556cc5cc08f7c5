"""EC2 provisioning against moto's emulator, a real HTTP server on loopback: machines are
made once, found again by tag (also after a process killed right after RunInstances),
and terminated by destroy."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ConnectionClosedError

from reconciler.models.schema import SshSettings
from reconciler.provision import RUNNING, TERMINATED, ProvisionError, provisioner_for
from reconciler.provision.ec2 import Ec2Provisioner, host_key_from_console, split_provider_id
from reconciler.state.provisioning import SqliteRecorder
from tests.provision.conftest import REGION, aws_environment, desired_machine

REPO = Path(__file__).resolve().parents[2]


def ec2() -> Any:
    return boto3.client("ec2", region_name=REGION)


_AMI: list[str] = []  # the emulator's AMIs are the same after every reset


@pytest.fixture
def settings(aws: str) -> dict[str, Any]:
    """An ec2: block using what the emulator has: an AMI, a key pair, a security group
    (by name), a subnet of the default VPC."""
    client = ec2()
    if not _AMI:  # listing all ~1,300 takes a second or two
        _AMI.append(client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"])
    client.create_key_pair(KeyName="deploy")
    client.create_security_group(GroupName="web", Description="web")
    subnet = client.describe_subnets()["Subnets"][0]["SubnetId"]
    return {
        "region": REGION,
        "ami": _AMI[0],
        "instanceType": "t3.micro",
        "keyPair": "deploy",
        "securityGroups": ["web"],
        "subnetId": subnet,
        "rootVolumeSize": 16,
        "tags": {"team": "ops"},
    }


def live_instances(deployment: str = "test") -> list[dict[str, Any]]:
    pages = (
        ec2()
        .get_paginator("describe_instances")
        .paginate(
            Filters=[
                {"Name": "tag:reconciler:deployment", "Values": [deployment]},
                {"Name": "instance-state-name", "Values": ["pending", "running", "stopped"]},
            ]
        )
    )
    return [i for p in pages for r in p["Reservations"] for i in r["Instances"]]


def tags(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def test_two_machines_are_made_once(
    settings: dict[str, Any], recorder: SqliteRecorder, tmp_path: Path
) -> None:
    prov = provisioner_for("ec2", tmp_path)
    machines = [desired_machine(n, "ec2", provider=settings) for n in ("web1", "web2")]
    with ThreadPoolExecutor(2) as pool:  # as apply runs them: in threads
        first = list(pool.map(lambda m: prov.ensure("test", m, recorder), machines))
    assert len(live_instances()) == 2
    for m, got in zip(machines, first, strict=True):
        region, instance_id = split_provider_id(got.provider_id, None)
        assert region == REGION and instance_id.startswith("i-")
        assert got.state == RUNNING and got.address and got.ssh_host
        assert got.ssh_host != got.address  # the public address when there is one
        record = recorder.get(m.name)
        assert record is not None
        assert (record.state, record.provider_id) == (RUNNING, got.provider_id)
        assert record.detail["privateIp"] == got.address
        (instance,) = ec2().describe_instances(InstanceIds=[instance_id])["Reservations"][0][
            "Instances"
        ]
        assert tags(instance) == {
            "Name": m.name,
            "team": "ops",
            "reconciler:deployment": "test",
            "reconciler:machine": m.name,
            "reconciler:token": record.token,
        }
        assert instance["KeyName"] == "deploy"
        assert instance["SubnetId"] == settings["subnetId"]
        assert [g["GroupName"] for g in instance["SecurityGroups"]] == ["web"]
        volume_id = instance["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
        assert ec2().describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["Size"] == 16

    again = [prov.ensure("test", m, recorder) for m in machines]
    assert again == first
    # as compile passes a provisioned machine back: ssh as recorded (a stale public address
    # after a stop and start); the address is the instance's, not the record's
    stale = desired_machine("web1", "ec2", provider=settings, ssh=SshSettings(host="192.0.2.9"))
    assert prov.ensure("test", stale, recorder) == first[0]
    assert len(live_instances()) == 2
    assert prov.observe("test", "web1", first[0].provider_id) == RUNNING


CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path

    import boto3

    from reconciler.desired.state import DesiredMachine
    from reconciler.provision.ec2 import Ec2Provisioner
    from reconciler.state.provisioning import SqliteRecorder

    state, deployment, name, settings = sys.argv[1:]

    def die(**_):  # the answer to RunInstances is in; nothing has recorded it yet
        os.kill(os.getpid(), signal.SIGKILL)

    session = boto3.session.Session()
    session.events.register("after-call.ec2.RunInstances", die)
    machine = DesiredMachine(
        name=name, target_env="ec2", address=None, ssh=None, state_dir=None, max_parallel=4,
        compression="auto", profile=(), keys={}, properties={},
        provider=json.loads(settings), closure=(),
    )
    recorder = SqliteRecorder.open(Path(state), deployment)
    Ec2Provisioner(session=session).ensure(deployment, machine, recorder)
    print("not killed")
    """
)


def killed_after_run_instances(state: Path, name: str, settings: dict[str, Any]) -> None:
    """ensure in a real child process, SIGKILLed the moment RunInstances has answered."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(state), "test", name, json.dumps(settings)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr


def test_a_create_killed_after_run_instances_is_not_duplicated(
    settings: dict[str, Any], recorder: SqliteRecorder, tmp_path: Path
) -> None:
    killed_after_run_instances(tmp_path / "state.db", "db1", settings)
    # the token was recorded before the call, the instance never was
    record = recorder.get("db1")
    assert record is not None
    assert (record.state, record.provider_id) == ("creating", None)
    (made,) = live_instances()
    assert tags(made)["reconciler:token"] == record.token

    got = Ec2Provisioner().ensure(
        "test", desired_machine("db1", "ec2", provider=settings), recorder
    )
    assert got.provider_id == f"{REGION}/{made['InstanceId']}"
    assert len(live_instances()) == 1
    record = recorder.get("db1")
    assert record is not None
    assert (record.state, record.provider_id) == (RUNNING, got.provider_id)


def test_destroy_finds_an_unrecorded_instance_by_its_tags(
    settings: dict[str, Any], recorder: SqliteRecorder, tmp_path: Path
) -> None:
    killed_after_run_instances(tmp_path / "state.db", "db1", settings)
    (made,) = live_instances()
    Ec2Provisioner().destroy("test", "db1", None, recorder)  # no id was recorded
    assert live_instances() == []
    state = ec2().describe_instances(InstanceIds=[made["InstanceId"]])["Reservations"][0]
    assert state["Instances"][0]["State"]["Name"] == TERMINATED
    assert recorder.get("db1") is None


def test_a_lost_answer_is_looked_up_before_the_retry(
    settings: dict[str, Any], recorder: SqliteRecorder
) -> None:
    """The connection drops after EC2 made the instance: the retry finds it by tag."""
    calls: list[str] = []

    def drop_first(**kwargs: Any) -> None:
        calls.append("RunInstances")
        if len(calls) == 1:
            raise ConnectionClosedError(endpoint_url="emulator")

    session = boto3.session.Session()
    session.events.register("after-call.ec2.RunInstances", drop_first)
    prov = Ec2Provisioner(session=session, retry_delay=0.01)
    got = prov.ensure("test", desired_machine("app", "ec2", provider=settings), recorder)
    assert calls == ["RunInstances"]  # found by tag: not called again
    (made,) = live_instances()
    assert got.provider_id.endswith(made["InstanceId"])


def test_destroy_terminates_and_is_idempotent(
    settings: dict[str, Any], recorder: SqliteRecorder
) -> None:
    prov = Ec2Provisioner()
    made = [
        prov.ensure("test", desired_machine(n, "ec2", provider=settings), recorder)
        for n in ("a", "b")
    ]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda p: prov.destroy("test", p[0], p[1].provider_id, recorder),
                      zip(("a", "b"), made, strict=True)))  # fmt: skip
    assert live_instances() == []
    assert recorder.all() == {}
    for p in made:
        assert prov.observe("test", "a", p.provider_id) == TERMINATED
    prov.destroy("test", "a", made[0].provider_id, recorder)  # again: nothing to do
    prov.destroy("test", "never", None, recorder)


def test_the_ec2_specific_endpoint_variable_is_honoured(
    aws: str, settings: dict[str, Any], recorder: SqliteRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    for key, value in aws_environment(aws, specific=True).items():
        monkeypatch.setenv(key, value)
    got = Ec2Provisioner().ensure("test", desired_machine("x", "ec2", provider=settings), recorder)
    assert got.state == RUNNING


def test_provider_errors_name_the_machine(
    settings: dict[str, Any], recorder: SqliteRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    prov = Ec2Provisioner()
    bad = {**settings, "securityGroups": ["web", "nope"]}
    with pytest.raises(ProvisionError, match=r"machine m1: security group nope not found"):
        prov.ensure("test", desired_machine("m1", "ec2", provider=bad), recorder)
    bad = {**settings, "securityGroups": [], "subnetId": "subnet-00000000"}
    with pytest.raises(ProvisionError, match=r"machine m2: ec2 RunInstances failed: .*; check"):
        prov.ensure("test", desired_machine("m2", "ec2", provider=bad), recorder)
    assert live_instances() == []

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key)
    with pytest.raises(ProvisionError, match="machine m3: ec2 DescribeInstances: no AWS cred"):
        Ec2Provisioner().ensure("test", desired_machine("m3", "ec2", provider=settings), recorder)


# -- host keys from the console ----------------------------------------------------------


def blob(kind: str, seed: int) -> str:
    """A public key blob of `kind` (the type, length-prefixed, then some key bytes)."""
    raw = len(kind).to_bytes(4, "big") + kind.encode() + bytes([seed]) * 36
    return base64.b64encode(raw).decode()


def console(*lines: str) -> str:
    return "\r\n".join(
        [
            "[   10.1] cloud-init[812]: Generating public/private ed25519 key pair.",
            "-----BEGIN SSH HOST KEY FINGERPRINTS-----",
            "256 SHA256:abc root@ip-10-0-0-5 (ED25519)",
            "-----END SSH HOST KEY FINGERPRINTS-----",
            "-----BEGIN SSH HOST KEY KEYS-----",
            *lines,
            "-----END SSH HOST KEY KEYS-----",
            "[   12.0] cloud-init[812]: Cloud-init v. 23.1 finished",
        ]
    )


def test_the_console_host_key_prefers_ed25519() -> None:
    ecdsa = blob("ecdsa-sha2-nistp256", 1)
    ed = blob("ssh-ed25519", 2)
    rsa = blob("ssh-rsa", 3)
    text = console(
        f"ecdsa-sha2-nistp256 {ecdsa} root@ip-10-0-0-5",
        f"ssh-ed25519 {ed} root@ip-10-0-0-5",
        f"ssh-rsa {rsa} root@ip-10-0-0-5",
    )
    assert host_key_from_console(text) == f"ssh-ed25519 {ed}"
    assert host_key_from_console(console(f"ssh-rsa {rsa}", f"ecdsa-sha2-nistp256 {ecdsa}")) == (
        f"ecdsa-sha2-nistp256 {ecdsa}"
    )


def test_the_console_host_key_is_none_without_a_sound_block() -> None:
    assert host_key_from_console(None) is None
    assert host_key_from_console("Linux version 6.1 ... login:") is None
    # a line whose blob is not of the type it claims (a console mangled it)
    assert host_key_from_console(console(f"ssh-ed25519 {blob('ssh-rsa', 3)}")) is None
    # the last block wins: a re-installed machine prints its new keys on the next boot
    old, new = blob("ssh-ed25519", 4), blob("ssh-ed25519", 5)
    both = console(f"ssh-ed25519 {old}") + "\nreboot\n" + console(f"ssh-ed25519 {new}")
    assert host_key_from_console(both) == f"ssh-ed25519 {new}"


def test_the_console_output_of_the_emulator_has_no_host_key(
    settings: dict[str, Any], recorder: SqliteRecorder
) -> None:
    got = Ec2Provisioner().ensure("test", desired_machine("m", "ec2", provider=settings), recorder)
    assert got.host_key is None  # trust on first use


def test_provider_ids_carry_the_region() -> None:
    assert split_provider_id("eu-west-1/i-0abc", "us-east-1") == ("eu-west-1", "i-0abc")
    assert split_provider_id("i-0abc", "us-east-1") == ("us-east-1", "i-0abc")
    with pytest.raises(ProvisionError, match="not an EC2 machine id"):
        split_provider_id("rc-0123456789", "us-east-1")
