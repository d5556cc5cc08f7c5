"""The model schema of SPEC §2 as pydantic models; unknown keys are errors everywhere."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
DEPLOYMENT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
DeploymentName = Annotated[str, StringConstraints(pattern=DEPLOYMENT_PATTERN)]


def _plain_path(value: Any) -> Any:
    if isinstance(value, str) and any(ord(c) < 32 or c == "\x7f" for c in value):
        raise ValueError(f"{value!r} contains a control character; use a plain relative path")
    return value


RelPath = Annotated[str, BeforeValidator(_plain_path)]

ActivationType = Literal["process", "sqlite-database", "wrapper", "package"]
ACTIVATION_TYPES: tuple[str, ...] = ("process", "sqlite-database", "wrapper", "package")
TargetEnv = Literal["ssh", "local", "container", "ec2"]

# a stateDir is filled and cleaned up by reconciler: never these folders (nor inside the
# virtual file systems)
_SYSTEM_DIRS = frozenset(
    {"bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "opt", "proc", "root"}
    | {"run", "sbin", "srv", "sys", "tmp", "usr", "var"}
)
_VIRTUAL = frozenset({"dev", "proc", "sys", "etc", "boot"})

_DURATION = re.compile(r"[ \t]*([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)[ \t]*")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """'500ms', '30s', '5m', '1h' → seconds."""
    if isinstance(value, str):
        m = _DURATION.fullmatch(value)
        if m:
            return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    raise ValueError(f"{value!r} is not a duration; write a number with a unit: 500ms, 30s, 5m, 1h")


DURATION_PATTERN = r"^[ \t]*[0-9]+(\.[0-9]+)?(ms|s|m|h)[ \t]*$"
# What editors are told (models/editor_schema.py): the text validate reads, not the seconds
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["500ms", "30s"]}),
]


def _scalar_to_str(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


EnvValue = Annotated[
    str, BeforeValidator(_scalar_to_str), WithJsonSchema({"type": ["string", "number", "boolean"]})
]


PERCENT_PATTERN = r"^([1-9][0-9]?|100)%$"


def _max_unavailable(value: Any) -> Any:
    """A count ≥ 1 or a percentage 1-100 %, kept as the text rollout reads ("3", "25%")."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return str(value)
    if isinstance(value, str) and re.fullmatch(PERCENT_PATTERN, value):
        return value
    raise ValueError(
        f"maxUnavailable must be a number of instances (1 or more) or a percentage from 1% "
        f"to 100%; got {value!r}"
    )


MaxUnavailable = Annotated[
    str,
    BeforeValidator(_max_unavailable),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": PERCENT_PATTERN},
            ],
            "examples": [1, "25%"],
        }
    ),
]


def _amount(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"expected a number, 0 or more; got {value!r}")


# capacity and requires: numbers of any unit, never negative
Amount = Annotated[
    int | float, BeforeValidator(_amount), WithJsonSchema({"type": "number", "minimum": 0})
]
Scalar = str | int | float | bool


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)


# --- reconciler.yaml ---------------------------------------------------------------


class FailoverSpec(Strict):
    """SPEC §10: a machine unreachable longer than `after` is failed and left out of
    placement; `latest-snapshot` lets stateful services fail over from their latest one."""

    after: Duration
    stateful: Literal["latest-snapshot"] | None = None


class DeploymentConfig(Strict):
    models: list[RelPath] = Field(min_length=1)
    branch: str | None = None
    autoApply: StrictBool = True
    selfHeal: StrictBool = True
    interval: Duration = Field(default=30.0, json_schema_extra={"default": "30s"})
    destroyMachines: StrictBool = False
    allowRewind: StrictBool = False
    failover: FailoverSpec | None = None  # absent: off


class RootConfig(Strict):
    deployments: dict[DeploymentName, DeploymentConfig] = Field(min_length=1)


# --- machines ------------------------------------------------------------------------


class SshSettings(Strict):
    host: str | None = None
    port: StrictInt = Field(default=22, ge=1, le=65535)
    user: str = "root"
    identityFile: str | None = None
    hostKey: str | None = None


class LocalSettings(Strict):
    pass


class ContainerSettings(Strict):
    pass


class Ec2Settings(Strict):
    region: str
    instanceType: str = "t3.micro"
    ami: str
    keyPair: str | None = None
    securityGroups: list[str] = Field(default_factory=list)
    subnetId: str | None = None
    rootVolumeSize: StrictInt | None = Field(default=None, ge=1)
    tags: dict[str, str] = Field(default_factory=dict)


class KeySpec(Strict):
    env: str | None = None
    file: str | None = None
    permissions: str = Field(default="0400", pattern=r"^0?[0-7]{3}$")
    user: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> KeySpec:
        if (self.env is None) == (self.file is None):
            raise ValueError("a key needs exactly one source: env: VARIABLE or file: PATH")
        return self


class DeploymentSettings(Strict):
    targetEnv: TargetEnv
    address: str | None = None
    maxParallel: StrictInt = Field(default=4, ge=1)
    stateDir: str | None = None
    compression: Literal["auto", "zstd", "gzip", "none"] = "auto"
    ssh: SshSettings | None = None
    local: LocalSettings | None = None
    container: ContainerSettings | None = None
    ec2: Ec2Settings | None = None
    keys: dict[Name, KeySpec] = Field(default_factory=dict)

    @field_validator("stateDir")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith("/"):
            raise ValueError(f"stateDir must be an absolute path, not {v!r}")
        parts = PurePosixPath(v).parts
        if ".." in parts:
            raise ValueError(f"stateDir {v!r} has a '..' part; write the folder it means")
        if len(parts) == 1 or (
            parts[1] in _SYSTEM_DIRS and (len(parts) == 2 or parts[1] in _VIRTUAL)
        ):
            raise ValueError(
                f"stateDir {v!r} is a system folder, which reconciler would fill and clean up; "
                "use a folder of its own, such as /var/lib/reconciler"
            )
        return v


class ContainerSpec(Strict):
    """What services can be deployed into; its type defaults to its name."""

    type: ActivationType | None = None
    portRange: tuple[StrictInt, StrictInt] | None = None
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("portRange")
    @classmethod
    def _range(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not (1 <= v[0] <= v[1] <= 65535):
            raise ValueError(
                f"portRange {list(v)} must be [low, high] with 1 <= low <= high <= 65535"
            )
        return v


DEFAULT_CONTAINERS: dict[str, dict[str, Any]] = {
    "process": {"portRange": [8000, 8999]},
    "sqlite-database": {},
    "wrapper": {},
    "package": {},
}


class MachineSpec(Strict):
    properties: dict[str, Any] = Field(default_factory=dict)
    packages: list[Name] = Field(default_factory=list)
    containers: dict[Name, ContainerSpec] = Field(default_factory=dict)
    deployment: DeploymentSettings
    capacity: dict[str, Amount] = Field(default_factory=dict)  # what policies may place here


# --- packages and services -------------------------------------------------------------


class PackageSpec(Strict):
    src: RelPath | None = None
    build: str | None = None
    deps: list[Name] = Field(default_factory=list)


class HealthCheck(Strict):
    http: str | None = None
    tcp: StrictBool | None = None
    command: str | None = None
    timeout: Duration = Field(default=10.0, json_schema_extra={"default": "10s"})

    @model_validator(mode="after")
    def _one_kind(self) -> HealthCheck:
        kinds = [k for k in ("http", "tcp", "command") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError(
                "a healthCheck needs exactly one of http: /path, tcp: true, command: …"
            )
        return self


def _port_value(value: Any) -> Any:
    if value is None or value == "auto":
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    raise ValueError(f"port must be a number from 1 to 65535, or auto; got {value!r}")


class RolloutSpec(Strict):
    """SPEC §9: replaced in batches of `maxUnavailable`, each healthy for `minReady`."""

    maxUnavailable: MaxUnavailable = Field(default="25%")
    minReady: Duration = Field(default=0.0, json_schema_extra={"default": "0s"})


class ServiceSpec(Strict):
    package: Name
    type: ActivationType = "process"
    command: str | None = None
    user: str | None = None
    port: Annotated[
        int | Literal["auto"] | None,
        BeforeValidator(_port_value),
        WithJsonSchema(
            {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, {"const": "auto"}]}
        ),
    ] = None
    dependsOn: list[Name] = Field(default_factory=list)
    connectsTo: list[Name] = Field(default_factory=list)
    activatesAfter: list[Name] = Field(default_factory=list)
    env: dict[str, EnvValue] = Field(
        default_factory=dict, json_schema_extra={"propertyNames": {"pattern": ENV_NAME_PATTERN}}
    )
    healthCheck: HealthCheck | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    requires: dict[str, Amount] = Field(default_factory=dict)  # against machines' capacity
    moveState: StrictBool = False  # process/wrapper: its state folder moves with it

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not re.fullmatch(ENV_NAME_PATTERN, key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return v


class DistributionTarget(Strict):
    target: Name
    container: Name | None = None


def _entry(value: Any) -> Any:
    return {"target": value} if isinstance(value, str) else value


DistributionEntry = Annotated[
    DistributionTarget,
    BeforeValidator(_entry),
    # a machine's name is short for {target: name}
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": NAME_PATTERN},
                DistributionTarget.model_json_schema(),
            ]
        }
    ),
]


class DistributionPolicy(Strict):
    """SPEC §10: the reconciler picks the machines."""

    replicas: StrictInt = Field(ge=1)
    select: dict[str, Scalar] = Field(default_factory=dict)  # machine properties to equal
    spread: str | None = None  # a machine property: instances go to distinct values first
    container: Name | None = None


def _list_or_policy(value: Any) -> str | None:
    return "list" if isinstance(value, list) else "policy" if isinstance(value, dict) else None


# a list of machines (SPEC §2.6), or a policy; told apart by shape so an error speaks of
# the form that was written
DistributionSpec = Annotated[
    Annotated[list[DistributionEntry], Tag("list")] | Annotated[DistributionPolicy, Tag("policy")],
    Discriminator(
        _list_or_policy,
        custom_error_type="distribution",
        custom_error_message="expected a list of machines, or a policy such as {replicas: 2}",
    ),
]


class ModelDocument(Strict):
    """The merged model of one deployment (and the shape of every model file)."""

    description: str | None = None
    machines: dict[Name, MachineSpec] = Field(default_factory=dict)
    packages: dict[Name, PackageSpec] = Field(default_factory=dict)
    services: dict[Name, ServiceSpec] = Field(default_factory=dict)
    distribution: dict[Name, DistributionSpec] = Field(default_factory=dict)


def env_prefix(name: str) -> str:
    """The environment-variable prefix a name maps to: `staff-db` → `STAFF_DB`."""
    return re.sub(r"[^A-Z0-9]", "_", name.upper())
