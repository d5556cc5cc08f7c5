"""The folders of a deployment under stateDir (SPEC §3): `deployments/<deployment>/`
with `profiles/`, `instances/<service>/` (runtime: pid, log, config), `state/<service>/`
(persistent data), `keys/` (0700) and `snapshots/`."""

from __future__ import annotations

import os
from typing import Any

from .files import dumps, read_json, write_atomic
from .request import Failure, Instance, abs_path, name_field


class Deployment:
    def __init__(self, req: dict[str, Any]) -> None:
        self.state_dir = abs_path(req, "stateDir")
        self.name = name_field(req, "deployment")
        self.root = os.path.join(self.state_dir, "deployments", self.name)

    def ensure(self) -> Deployment:
        for sub in ("profiles", "instances", "state", "snapshots"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        keys = os.path.join(self.root, "keys")
        os.makedirs(keys, mode=0o700, exist_ok=True)
        os.chmod(keys, 0o700)
        return self

    def instance_dir(self, service: str) -> str:
        return os.path.join(self.root, "instances", service)

    def state(self, service: str) -> str:
        return os.path.join(self.root, "state", service)

    def db(self, service: str) -> str:
        return os.path.join(self.state(service), f"{service}.sqlite")

    def write_config(self, inst: Instance, identity: str | None) -> None:
        """The instance's request and identity, for `status` and the wrapper's health."""
        folder = self.instance_dir(inst.service)
        os.makedirs(folder, exist_ok=True)
        config = dict(inst.raw)
        config["identity"] = identity
        write_atomic(os.path.join(folder, "config.json"), dumps(config))

    def recorded_config(self, service: str) -> dict[str, Any]:
        try:
            config = read_json(os.path.join(self.instance_dir(service), "config.json"))
        except Failure:
            return {}
        return config if isinstance(config, dict) else {}

    def recorded_env(self, service: str) -> dict[str, str]:
        env = self.recorded_config(service).get("env")
        return env if isinstance(env, dict) else {}

    def cwd(self, service: str) -> str:
        """Where checks of a running instance run: its state folder, if it has one."""
        state = self.state(service)
        return state if os.path.isdir(state) else "/"
