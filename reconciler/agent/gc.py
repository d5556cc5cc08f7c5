"""`gc`, under the caller's lease: drop this deployment's profiles not kept, then every
store path no profile of any deployment on the machine references (and none received in
the last `graceSeconds`: an attempt may be transferring before it locks); with
`deleteState`, the state, runtime folders and snapshots of services no kept profile
places here."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import Any

from . import profiles
from .files import file_size, read_json, remove
from .layout import Deployment
from .leases import read_lease
from .request import Failure, bad, req_str, seconds


class Freed:
    """What a gc removed, and how many bytes."""

    def __init__(self) -> None:
        self.bytes = 0
        self.young = 0
        self.paths: list[str] = []
        self.state: list[str] = []

    def tree(self, path: str) -> None:
        self.bytes += tree_size(path)
        remove_tree(path)


def cmd_gc(req: dict[str, Any]) -> dict[str, Any]:
    dep = Deployment(req)
    owner = req_str(req, "owner")
    keep = req.get("keep")
    if not isinstance(keep, list) or not all(isinstance(g, int) for g in keep):
        bad("'keep' must be a list of generation numbers")
    extra = req.get("keepPaths", [])
    grace = seconds(req.get("graceSeconds"), "graceSeconds", 3600.0)
    lease = read_lease(os.path.join(dep.state_dir, "lock"))
    if not lease or lease.get("owner") != owner:
        raise Failure(f"gc needs the machine's lock, held by {(lease or {}).get('owner')}")
    removed_profiles = drop_profiles(dep, keep)
    referenced, services, unknown = references(dep)
    freed = Freed()
    if not unknown:  # a profile written before profiles listed their closure: keep all
        drop_paths(dep.state_dir, referenced | set(extra), grace, freed)
    if req.get("deleteState"):
        drop_state(dep, services, freed)
    return {
        "removedProfiles": removed_profiles,
        "removedPaths": freed.paths,
        "removedState": freed.state,
        "freedBytes": freed.bytes,
        "unknownProfiles": unknown,
        "keptYoung": freed.young,
    }


def drop_profiles(dep: Deployment, keep: list[int]) -> list[int]:
    live = profiles.current(dep)
    removed = []
    for n in profiles.numbers(dep):
        if n not in keep and f"profiles/{n}" != live:
            remove(os.path.join(dep.root, "profiles", str(n)))
            removed.append(n)
    return removed


def references(dep: Deployment) -> tuple[set[str], set[str], list[str]]:
    """The store paths every profile on the machine references, the services this
    deployment's profiles place here, and the profiles that do not say."""
    referenced: set[str] = set()
    services: set[str] = set()
    unknown = []
    deployments = os.path.join(dep.state_dir, "deployments")
    for name in sorted(os.listdir(deployments)) if os.path.isdir(deployments) else []:
        other = Deployment({"stateDir": dep.state_dir, "deployment": name})
        for n in profiles.numbers(other):
            profile = read_json(os.path.join(other.root, "profiles", str(n)))
            if not isinstance(profile, dict) or not isinstance(profile.get("closure"), list):
                unknown.append(f"{name}/profiles/{n}")
                continue
            referenced.update(profile["closure"])
            if name == dep.name:
                services.update(profile.get("services", []))
    return referenced, services, unknown


def drop_paths(state_dir: str, referenced: set[str], grace: float, freed: Freed) -> None:
    store = os.path.join(state_dir, "store")
    now = time.time()
    for path in sorted(os.listdir(store)) if os.path.isdir(store) else []:
        if path.startswith(".") or path in referenced:
            continue
        meta = os.path.join(store, ".meta", path + ".json")
        try:
            received = os.lstat(meta).st_ctime  # tar keeps mtimes; ctime is arrival
        except FileNotFoundError:
            received = 0.0  # never completed: an interrupted transfer's leftover
        if now - received < grace:
            freed.young += 1
            continue
        remove(meta)  # first the meta: a path without one never counts as present
        freed.tree(os.path.join(store, path))
        freed.paths.append(path)


def drop_state(dep: Deployment, services: set[str], freed: Freed) -> None:
    manifest = read_json(os.path.join(dep.root, "manifest.json"))
    if isinstance(manifest, dict) and isinstance(manifest.get("instances"), dict):
        services = services | {i.get("service") for i in manifest["instances"].values()}
    for sub in ("state", "instances"):
        folder = os.path.join(dep.root, sub)
        for service in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if service not in services:
                freed.tree(os.path.join(folder, service))
                if sub == "state":
                    freed.state.append(service)
    snapshots = os.path.join(dep.root, "snapshots")
    for name in os.listdir(snapshots) if os.path.isdir(snapshots) else []:
        freed.bytes += file_size(os.path.join(snapshots, name))
        remove(os.path.join(snapshots, name))


def tree_size(path: str) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, f)).st_size
    return total


def remove_tree(path: str) -> None:
    """Remove a folder, store paths included (they are read-only)."""
    for folder, dirs, _ in os.walk(path):
        os.chmod(folder, 0o755)
        for d in dirs:
            with contextlib.suppress(OSError):
                if not os.path.islink(os.path.join(folder, d)):
                    os.chmod(os.path.join(folder, d), 0o755)
    shutil.rmtree(path, ignore_errors=True)
