"""Keys (SPEC §2.3, §12): read just before they are uploaded, only from where the operator
allows (models/keys.py); never written to the store, the state DB, plans or logs."""

from __future__ import annotations

from reconciler.desired.state import DesiredState
from reconciler.errors import InvalidModels, Problem
from reconciler.models.keys import KeyUnavailable, key_version, read_key
from reconciler.models.load import LoadedDeployment
from reconciler.models.merge import locate

Secrets = dict[str, dict[str, tuple[bytes, str]]]  # machine → key → (value, mode)


def read_secrets(loaded: LoadedDeployment, desired: DesiredState) -> Secrets:
    """Every key's value, or an error for each missing one (before anything changes).

    A value that changed since the models were loaded is refused too: the plan, and the
    version recorded with it, would not say what is uploaded."""
    found: Secrets = {}
    problems = []
    for name, machine in sorted(desired.machines.items()):
        for key, spec in sorted(machine.keys.items()):
            path = ("machines", name, "deployment", "keys", key)
            file, line = locate(loaded.marks, path) or ("", 0)
            where = ".".join(path)
            try:
                data = read_key(spec, loaded.keys)
            except KeyUnavailable as e:
                problems.append(Problem(file, line, where, str(e)))
                continue
            loaded_version = loaded.key_versions.get(name, {}).get(key)
            if (
                loaded_version
                and key_version(desired.deployment, name, key, data) != loaded_version
            ):
                problems.append(
                    Problem(file, line, where, "the key's value changed while planning; run again")
                )
                continue
            mode = spec.permissions if spec.permissions.startswith("0") else f"0{spec.permissions}"
            found.setdefault(name, {})[key] = (data, mode)
    if problems:
        raise InvalidModels(problems)
    return found
