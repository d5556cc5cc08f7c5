"""Keys (SPEC §2.3): read from the controller's environment or files just before they are
uploaded; never written to the store, the state DB, plans or logs."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.desired.state import DesiredState
from reconciler.errors import InvalidModels, Problem
from reconciler.models.load import LoadedDeployment
from reconciler.models.merge import locate

Secrets = dict[str, dict[str, tuple[bytes, str]]]  # machine → key → (value, mode)


def read_secrets(loaded: LoadedDeployment, desired: DesiredState) -> Secrets:
    """Every key's value, or an error for each missing one (before anything changes)."""
    found: Secrets = {}
    problems = []
    for name, machine in sorted(desired.machines.items()):
        for key, spec in sorted(machine.keys.items()):
            path = ("machines", name, "deployment", "keys", key)
            file, line = locate(loaded.marks, path) or ("", 0)
            where = ".".join(path)
            if spec.env is not None:
                value = os.environ.get(spec.env)
                if value is None:
                    problems.append(
                        Problem(file, line, where, f"environment variable {spec.env} is not set")
                    )
                    continue
                data = value.encode()
            else:
                assert spec.file is not None
                try:
                    data = Path(os.path.expanduser(spec.file)).read_bytes()
                except OSError as e:
                    problems.append(
                        Problem(file, line, where, f"cannot read {spec.file}: {e.strerror or e}")
                    )
                    continue
            mode = spec.permissions if spec.permissions.startswith("0") else f"0{spec.permissions}"
            found.setdefault(name, {})[key] = (data, mode)
    if problems:
        raise InvalidModels(problems)
    return found
