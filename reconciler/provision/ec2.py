"""`ec2`: machines provisioned as EC2 instances with boto3.

Idempotency does not rest on EC2's ClientToken alone (emulators such as moto ignore it,
and a token replays a terminated instance for a while): the token is recorded and
committed before RunInstances, every instance carries the tags `reconciler:deployment`,
`reconciler:machine` and `reconciler:token`, and instances are looked up by those tags
before every create and every retry of one. RunInstances therefore goes through a client
without botocore's own retries (a retried call the server had already carried out would
make a second instance); every other call retries in botocore's `standard` mode.

Credentials come from the standard AWS chain; `AWS_ENDPOINT_URL` and
`AWS_ENDPOINT_URL_EC2` are honoured by boto3 itself.

provider_id is `<region>/<instance id>`: destroy and observe are given no settings (the
machine may be gone from the models), and an instance id alone does not say where it is.
"""

from __future__ import annotations

import base64
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from reconciler.desired.state import DesiredMachine
from reconciler.provision.base import (
    MISSING,
    PENDING,
    RUNNING,
    TERMINATED,
    Provisioned,
    ProvisionError,
    Recorder,
)

PROVIDER = "ec2"
TAG_DEPLOYMENT = "reconciler:deployment"
TAG_MACHINE = "reconciler:machine"
TAG_TOKEN = "reconciler:token"
LIVE_STATES = ("pending", "running", "stopping", "stopped")
GONE_STATES = ("shutting-down", "terminated")
# RunInstances errors worth another try (after looking the instance up again)
RETRYABLE_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "InsufficientInstanceCapacity",
    }
)
_HOST_KEYS_BLOCK = re.compile(
    r"-----BEGIN SSH HOST KEY KEYS-----(.*?)-----END SSH HOST KEY KEYS-----", re.S
)
_KEY_LINE = re.compile(
    r"\b(ssh-ed25519|ecdsa-sha2-nistp(?:256|384|521)|ssh-rsa)\s+([A-Za-z0-9+/]+=*)"
)
_KEY_PREFERENCE = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                   "ecdsa-sha2-nistp521", "ssh-rsa")  # fmt: skip


def host_key_from_console(output: str | None) -> str | None:
    """The machine's SSH host key ("ssh-ed25519 AAAA...") from the block cloud-init prints
    on the console, preferring ed25519; None when there is none (yet). The last block
    wins: a machine prints it again on every boot."""
    if not output:
        return None
    blocks = _HOST_KEYS_BLOCK.findall(output)
    if not blocks:
        return None
    found: dict[str, str] = {}
    for kind, blob in _KEY_LINE.findall(blocks[-1]):
        if _blob_type(blob) == kind:  # skip lines mangled on a noisy console
            found.setdefault(kind, f"{kind} {blob}")
    return next((found[k] for k in _KEY_PREFERENCE if k in found), None)


def _blob_type(blob: str) -> str | None:
    """The key type an OpenSSH public key blob names in its first field."""
    try:
        raw = base64.b64decode(blob, validate=True)
    except ValueError:
        return None
    if len(raw) < 4:
        return None
    size = int.from_bytes(raw[:4], "big")
    return raw[4 : 4 + size].decode("ascii", "replace") if len(raw) >= 4 + size else None


def split_provider_id(provider_id: str, default_region: str | None) -> tuple[str, str]:
    """(region, instance id) of `<region>/<instance id>`; a bare id is in `default_region`."""
    region, _, instance = provider_id.rpartition("/")
    region = region or default_region or ""
    if not region or not instance.startswith("i-"):
        raise ProvisionError(
            f"{provider_id!r} is not an EC2 machine id (<region>/i-…); the record is damaged"
        )
    return region, instance


@dataclass(frozen=True)
class Ec2Settings:
    region: str
    ami: str
    instance_type: str
    key_pair: str | None
    security_groups: tuple[str, ...]
    subnet_id: str | None
    root_volume_size: int | None
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, machine: DesiredMachine) -> Ec2Settings:
        p = machine.provider
        if not p.get("region") or not p.get("ami"):
            raise ProvisionError(
                f"machine {machine.name}: deployment.ec2 needs region and ami (e.g. ec2: "
                "{region: us-east-1, ami: ami-…})"
            )
        return cls(
            region=str(p["region"]),
            ami=str(p["ami"]),
            instance_type=str(p.get("instanceType") or "t3.micro"),
            key_pair=p.get("keyPair"),
            security_groups=tuple(p.get("securityGroups") or ()),
            subnet_id=p.get("subnetId"),
            root_volume_size=p.get("rootVolumeSize"),
            tags={str(k): str(v) for k, v in (p.get("tags") or {}).items()},
        )


class Ec2Provisioner:
    """Thread safe: boto3 clients are, and they are made under a lock (sessions are not)."""

    def __init__(
        self,
        *,
        session: boto3.session.Session | None = None,
        retry_mode: str = "standard",
        max_attempts: int = 8,
        create_attempts: int = 5,
        retry_delay: float = 1.0,
        poll_interval: float = 5.0,
        ready_timeout: float = 600.0,
        max_pool_connections: int = 32,
    ) -> None:
        self._session = session
        self._retry_mode = retry_mode
        self._max_attempts = max_attempts
        self._create_attempts = create_attempts
        self._retry_delay = retry_delay
        self._poll_interval = poll_interval
        self._ready_timeout = ready_timeout
        self._pool = max_pool_connections
        self._clients: dict[tuple[str, bool], Any] = {}
        self._lock = threading.Lock()
        # lookups every machine of a fleet shares: security group ids, AMI root devices
        self._cache: dict[tuple[Any, ...], Any] = {}

    # -- the Provisioner protocol ----------------------------------------------------------

    def ensure(self, deployment: str, machine: DesiredMachine, recorder: Recorder) -> Provisioned:
        name = machine.name
        settings = Ec2Settings.of(machine)
        token = recorder.token(name, PROVIDER)
        with self._aws(name, "DescribeInstances"):
            instance = self._find(settings.region, deployment, name, token)
        if instance is None:
            instance = self._create(deployment, machine, settings, token, recorder)
        else:
            recorder.step(name, _state(instance), provider_id=_pid(settings.region, instance))
            if _state(instance) in ("stopping", "stopped"):
                self._start(settings.region, name, instance)
        pid = _pid(settings.region, instance)
        if not (_state(instance) == RUNNING and instance.get("PrivateIpAddress")):
            instance = self._wait_running(settings.region, name, instance["InstanceId"])
        host_key = self._host_key(settings.region, name, instance["InstanceId"])
        private = instance.get("PrivateIpAddress")
        public = instance.get("PublicIpAddress")
        recorder.step(
            name, RUNNING, provider_id=pid, privateIp=private, publicIp=public, hostKey=host_key
        )
        ssh = machine.ssh
        identity = ssh.identityFile if ssh else None
        return Provisioned(
            provider_id=pid,
            state=RUNNING,
            address=private,
            # not ssh.host: for a provisioned machine that is what an earlier ensure found,
            # and a stopped and started instance has a new public address
            ssh_host=public or private,
            ssh_port=ssh.port if ssh else 22,
            ssh_user=ssh.user if ssh else "root",
            identity_file=os.path.expanduser(identity) if identity else None,
            host_key=host_key,
        )

    def destroy(
        self, deployment: str, machine: str, provider_id: str | None, recorder: Recorder
    ) -> None:
        region: str | None = None
        instance_id: str | None = None
        if provider_id:
            region, instance_id = split_provider_id(provider_id, self._default_region())
        else:  # a create interrupted before its instance was recorded: the region was
            region = recorder.detail(machine).get("region")
        if not region:
            recorder.forget(machine)  # nothing was ever asked of EC2
            return
        recorder.step(machine, "terminating")
        with self._aws(machine, "DescribeInstances"):
            # also whatever carries the machine's tags without being recorded
            ids = {i["InstanceId"] for i in self._tagged(region, deployment, machine)}
        if instance_id:
            ids.add(instance_id)
        if ids:
            with self._aws(machine, "TerminateInstances"):
                self._terminate(region, sorted(ids))
            self._wait_terminated(region, machine, sorted(ids))
        recorder.forget(machine)

    def observe(self, deployment: str, machine: str, provider_id: str) -> str:
        region, instance_id = split_provider_id(provider_id, self._default_region())
        with self._aws(machine, "DescribeInstances"):
            instance = self._describe(region, instance_id)
        return MISSING if instance is None else _state(instance)

    # -- creating ---------------------------------------------------------------------------

    def _create(
        self,
        deployment: str,
        machine: DesiredMachine,
        settings: Ec2Settings,
        token: str,
        recorder: Recorder,
    ) -> dict[str, Any]:
        name = machine.name
        base = self._run_parameters(deployment, name, settings)
        once = self._client(settings.region, retries=False)
        delay = self._retry_delay
        for attempt in range(1, self._create_attempts + 1):
            if attempt > 1:  # the last call may have made it after all: look again first
                with self._aws(name, "DescribeInstances"):
                    found = self._find(settings.region, deployment, name, token)
                if found is not None:
                    recorder.step(name, _state(found), provider_id=_pid(settings.region, found))
                    return found
            recorder.step(name, "creating", region=settings.region, token=token)
            params = _with_token(base, token)
            try:
                instance: dict[str, Any] = once.run_instances(**params)["Instances"][0]
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code", "")
                if code in RETRYABLE_CODES and attempt < self._create_attempts:
                    time.sleep(delay)
                    delay = min(delay * 2, 20.0)
                    continue
                raise _client_error(name, "RunInstances", e) from None
            except BotoCoreError as e:  # connection reset, timeout: it may or may not exist
                if attempt < self._create_attempts and not isinstance(e, NoCredentialsError):
                    time.sleep(delay)
                    delay = min(delay * 2, 20.0)
                    continue
                raise _core_error(name, "RunInstances", e) from None
            if _state(instance) in GONE_STATES:
                # EC2 replayed the answer for this token: an instance that has since died.
                recorder.forget(name)
                token = recorder.token(name, PROVIDER)
                continue
            recorder.step(name, _state(instance), provider_id=_pid(settings.region, instance))
            return instance
        raise ProvisionError(
            f"machine {name}: ec2 RunInstances failed {self._create_attempts} times; "
            "try again later"
        )

    def _run_parameters(self, deployment: str, name: str, s: Ec2Settings) -> dict[str, Any]:
        ec2 = self._client(s.region)
        tags = {"Name": name, **s.tags, TAG_DEPLOYMENT: deployment, TAG_MACHINE: name}
        params: dict[str, Any] = {
            "ImageId": s.ami,
            "InstanceType": s.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "TagSpecifications": [
                {"ResourceType": kind, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
                for kind in ("instance", "volume")
            ],
        }
        if s.key_pair:
            params["KeyName"] = s.key_pair
        if s.subnet_id:
            params["SubnetId"] = s.subnet_id
        if s.security_groups:
            key = ("sg", s.region, s.subnet_id, s.security_groups)
            with self._aws(name, "DescribeSecurityGroups"):
                params["SecurityGroupIds"] = self._cached(
                    key, lambda: self._security_group_ids(ec2, name, s)
                )
        if s.root_volume_size:
            with self._aws(name, "DescribeImages"):
                device = self._cached(("root", s.region, s.ami), lambda: _root_device(ec2, s.ami))
            if not device:
                raise ProvisionError(
                    f"machine {name}: ami {s.ami} not found in {s.region} (or it has no root "
                    "device); check deployment.ec2.ami and region"
                )
            params["BlockDeviceMappings"] = [
                {
                    "DeviceName": device,
                    "Ebs": {"VolumeSize": s.root_volume_size, "DeleteOnTermination": True},
                }
            ]
        return params

    def _cached(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """Good for one provisioner's life (one apply): concurrent misses compute twice,
        harmlessly; a failure is not kept."""
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        value = compute()
        with self._lock:
            self._cache[key] = value
        return value

    def _security_group_ids(self, ec2: Any, name: str, s: Ec2Settings) -> list[str]:
        ids = [g for g in s.security_groups if g.startswith("sg-")]
        names = [g for g in s.security_groups if not g.startswith("sg-")]
        if not names:
            return ids
        filters = [{"Name": "group-name", "Values": names}]
        if s.subnet_id:  # names are unique per VPC only
            subnets = ec2.describe_subnets(SubnetIds=[s.subnet_id])["Subnets"]
            filters.append({"Name": "vpc-id", "Values": [subnets[0]["VpcId"]]})
        else:
            vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])
            if vpcs.get("Vpcs"):
                filters.append({"Name": "vpc-id", "Values": [vpcs["Vpcs"][0]["VpcId"]]})
        groups = ec2.describe_security_groups(Filters=filters).get("SecurityGroups", [])
        by_name = {g["GroupName"]: g["GroupId"] for g in groups}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ProvisionError(
                f"machine {name}: security group {', '.join(missing)} not found in {s.region}"
                f"{' (VPC of ' + s.subnet_id + ')' if s.subnet_id else ''}; create it or list "
                "its id (sg-…) in deployment.ec2.securityGroups"
            )
        return ids + [by_name[n] for n in names]

    def _start(self, region: str, name: str, instance: dict[str, Any]) -> None:
        if _state(instance) == "stopping":
            with self._aws(name, "DescribeInstances"):
                self._client(region).get_waiter("instance_stopped").wait(
                    InstanceIds=[instance["InstanceId"]],
                    WaiterConfig={"Delay": self._poll_interval, "MaxAttempts": 120},
                )
        with self._aws(name, "StartInstances"):
            self._client(region).start_instances(InstanceIds=[instance["InstanceId"]])

    # -- waiting ----------------------------------------------------------------------------

    def _wait_running(self, region: str, name: str, instance_id: str) -> dict[str, Any]:
        """Poll until running with a private address (first quickly: emulators are instant)."""
        deadline = time.monotonic() + self._ready_timeout
        delay = 0.1
        last = "not yet visible"
        while True:
            with self._aws(name, "DescribeInstances"):
                instance = self._describe(region, instance_id)
            if instance is not None:
                last = _state(instance)
                if last == RUNNING and instance.get("PrivateIpAddress"):
                    return instance
                if last in GONE_STATES:
                    reason = instance.get("StateReason", {}).get("Message", "no reason given")
                    raise ProvisionError(
                        f"machine {name}: instance {instance_id} went {last} while starting "
                        f"({reason}); check the AMI, instance type and quotas"
                    )
            if time.monotonic() > deadline:
                raise ProvisionError(
                    f"machine {name}: instance {instance_id} not running with an address after "
                    f"{self._ready_timeout:.0f} s (last seen: {last}); run apply again to wait on"
                )
            time.sleep(delay)
            delay = min(delay * 2, self._poll_interval)

    def _wait_terminated(self, region: str, name: str, ids: list[str]) -> None:
        deadline = time.monotonic() + self._ready_timeout
        delay = 0.1
        pending = list(ids)
        while pending:
            with self._aws(name, "DescribeInstances"):
                pending = [
                    i
                    for i in pending
                    if (inst := self._describe(region, i)) and _state(inst) != TERMINATED
                ]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ProvisionError(
                    f"machine {name}: {', '.join(pending)} not terminated after "
                    f"{self._ready_timeout:.0f} s; run destroy again to wait on"
                )
            time.sleep(delay)
            delay = min(delay * 2, self._poll_interval)

    def _host_key(self, region: str, name: str, instance_id: str) -> str | None:
        """From the console output, when the instance printed it already; else None (the
        first key seen is then trusted and recorded)."""
        try:
            out = self._client(region).get_console_output(InstanceId=instance_id)
        except (ClientError, BotoCoreError):
            return None  # not fatal: trust on first use
        text = out.get("Output")
        key = host_key_from_console(text)
        if key is None and text and "BEGIN SSH HOST KEY" not in text:
            # botocore decodes the base64 itself; an endpoint that does not gets a second look
            with suppress(ValueError):  # UnicodeDecodeError is one
                key = host_key_from_console(base64.b64decode(text, validate=True).decode())
        return key

    # -- lookups ----------------------------------------------------------------------------

    def _find(self, region: str, deployment: str, name: str, token: str) -> dict[str, Any] | None:
        """The live instance of the machine: the one with our token first, then a running
        one, then the oldest (duplicates made outside reconciler stay as they are)."""
        found = self._tagged(region, deployment, name)
        if not found:
            return None
        order = {"running": 0, "pending": 1, "stopping": 2, "stopped": 3}
        return min(
            found,
            key=lambda i: (
                _tag(i, TAG_TOKEN) != token,
                order.get(_state(i), 9),
                str(i.get("LaunchTime", "")),
                i["InstanceId"],
            ),
        )

    def _tagged(self, region: str, deployment: str, name: str) -> list[dict[str, Any]]:
        pages = (
            self._client(region)
            .get_paginator("describe_instances")
            .paginate(
                Filters=[
                    {"Name": f"tag:{TAG_DEPLOYMENT}", "Values": [deployment]},
                    {"Name": f"tag:{TAG_MACHINE}", "Values": [name]},
                    {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
                ]
            )
        )
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def _describe(self, region: str, instance_id: str) -> dict[str, Any] | None:
        try:
            reservations = self._client(region).describe_instances(InstanceIds=[instance_id])[
                "Reservations"
            ]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in (
                "InvalidInstanceID.NotFound",
                "InvalidInstanceID.Malformed",
            ):
                return None
            raise
        instances = [i for r in reservations for i in r["Instances"]]
        return instances[0] if instances else None

    def _terminate(self, region: str, ids: list[str]) -> None:
        try:
            self._client(region).terminate_instances(InstanceIds=ids)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "InvalidInstanceID.NotFound":
                raise
            for i in ids:  # one of them is gone already: the others one by one
                try:
                    self._client(region).terminate_instances(InstanceIds=[i])
                except ClientError as e1:
                    if e1.response.get("Error", {}).get("Code") != "InvalidInstanceID.NotFound":
                        raise

    # -- clients and errors -----------------------------------------------------------------

    def _client(self, region: str, retries: bool = True) -> Any:
        key = (region, retries)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                if self._session is None:
                    self._session = boto3.session.Session()
                config = Config(
                    retries={
                        "mode": self._retry_mode,
                        "max_attempts": self._max_attempts if retries else 1,
                    },
                    max_pool_connections=self._pool,
                    connect_timeout=10,
                    read_timeout=60,
                    user_agent_extra="reconciler",
                )
                client = self._session.client("ec2", region_name=region, config=config)
                self._clients[key] = client
            return client

    def _default_region(self) -> str | None:
        with self._lock:
            if self._session is None:
                self._session = boto3.session.Session()
            region: str | None = self._session.region_name
            return region

    @contextmanager
    def _aws(self, name: str, operation: str) -> Iterator[None]:
        try:
            yield
        except ClientError as e:
            raise _client_error(name, operation, e) from None
        except BotoCoreError as e:
            raise _core_error(name, operation, e) from None


def _client_error(name: str, operation: str, e: ClientError) -> ProvisionError:
    err = e.response.get("Error", {})
    code, message = err.get("Code", "error"), err.get("Message", str(e))
    if code in ("AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId"):
        hint = "check the AWS credentials (standard chain: AWS_* variables, ~/.aws, a role)"
    elif code.startswith(("InvalidAMIID", "InvalidKeyPair", "InvalidSubnet", "InvalidGroup")):
        hint = "check deployment.ec2 (ami, keyPair, subnetId, securityGroups) and its region"
    elif code in RETRYABLE_CODES:
        hint = "try again later"
    else:
        hint = "check deployment.ec2 and the account's limits"
    return ProvisionError(f"machine {name}: ec2 {operation} failed: {code}: {message}; {hint}")


def _core_error(name: str, operation: str, e: BotoCoreError) -> ProvisionError:
    if isinstance(e, NoCredentialsError):
        return ProvisionError(
            f"machine {name}: ec2 {operation}: no AWS credentials found; set AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run where a role provides them"
        )
    return ProvisionError(
        f"machine {name}: ec2 {operation} failed: {e}; check the network and AWS_ENDPOINT_URL "
        "(if set)"
    )


def _root_device(ec2: Any, ami: str) -> str | None:
    images = ec2.describe_images(ImageIds=[ami]).get("Images", [])
    return str(images[0]["RootDeviceName"]) if images and images[0].get("RootDeviceName") else None


def _with_token(base: dict[str, Any], token: str) -> dict[str, Any]:
    params = dict(base)
    params["ClientToken"] = token  # real EC2 deduplicates by it; we do not rely on that
    params["TagSpecifications"] = [
        {**spec, "Tags": [*spec["Tags"], {"Key": TAG_TOKEN, "Value": token}]}
        for spec in base["TagSpecifications"]
    ]
    return params


def _state(instance: dict[str, Any]) -> str:
    return str(instance.get("State", {}).get("Name", PENDING))


def _pid(region: str, instance: dict[str, Any]) -> str:
    return f"{region}/{instance['InstanceId']}"


def _tag(instance: dict[str, Any], key: str) -> str | None:
    return next((t["Value"] for t in instance.get("Tags", []) if t["Key"] == key), None)
