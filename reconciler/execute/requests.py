"""Activation requests: what the agent on a machine is asked to run, and the environment
each instance receives (SPEC §2.5), with the machine's absolute paths. Pure."""

from __future__ import annotations

from typing import Any

from reconciler.desired.state import DesiredInstance, DesiredState
from reconciler.models.schema import env_prefix


def deployment_dir(state_dir: str, deployment: str) -> str:
    return f"{state_dir}/deployments/{deployment}"


def instance_env(
    inst: DesiredInstance, state_dir: str, deployment: str, address: str
) -> dict[str, str]:
    dep_dir = deployment_dir(state_dir, deployment)
    env = dict(inst.env)
    env.update(
        {
            "RECONCILER_SERVICE": inst.service,
            "RECONCILER_MACHINE": inst.machine,
            "RECONCILER_DEPLOYMENT": deployment,
            "RECONCILER_PACKAGE": f"{state_dir}/store/{inst.package_path}",
            "RECONCILER_STATE": f"{dep_dir}/state/{inst.service}",
            "RECONCILER_CONFIG": f"{dep_dir}/instances/{inst.service}/config.json",
            "RECONCILER_KEYS": f"{dep_dir}/keys",
            "HOST": address,
        }
    )
    if inst.port is not None:
        env["PORT"] = str(inst.port)
    for dep, got in inst.receives.items():
        p = env_prefix(dep)
        env[f"{p}_HOST"] = got.host
        env[f"{p}_HOSTS"] = ",".join(got.hosts)
        if got.port is not None:
            env[f"{p}_PORT"] = str(got.port)
            env[f"{p}_URL"] = f"http://{got.host}:{got.port}"
        if got.path is not None:  # a sqlite-database: always on this machine (validated)
            env[f"{p}_PATH"] = f"{dep_dir}/{got.path}"
    return env


def activation_request(desired: DesiredState, key: str, state_dir: str) -> dict[str, Any]:
    inst = desired.instances[key]
    address = desired.machines[inst.machine].address or ""
    health = inst.health.model_dump() if inst.health else None
    return {
        "stateDir": state_dir,
        "deployment": desired.deployment,
        "identity": inst.identity,
        "instance": {
            "key": key,
            "service": inst.service,
            "type": inst.type,
            "package": f"{state_dir}/store/{inst.package_path}",
            "command": inst.command,
            "user": inst.user,
            "env": instance_env(inst, state_dir, desired.deployment, address),
            "health": health,
            "host": address,
            "port": inst.port,
        },
    }
