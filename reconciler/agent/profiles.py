"""A deployment's profiles (`profiles/<generation>`, `current` switched atomically) and
its manifest (what `reconstruct` rebuilds lost local state from)."""

from __future__ import annotations

import os
from typing import Any

from .files import dumps, fsync_dir, read_json, remove, write_atomic
from .layout import Deployment
from .request import Failure, bad, opt_int


def numbers(dep: Deployment) -> list[int]:
    folder = os.path.join(dep.root, "profiles")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(int(n) for n in names if n.isdigit())


def current(dep: Deployment) -> str | None:
    """The profile `current` links to, as `profiles/<n>`."""
    link = os.path.join(dep.root, "current")
    return os.readlink(link) if os.path.islink(link) else None


def cmd_switch_profile(req: dict[str, Any]) -> dict[str, Any]:
    dep = Deployment(req)
    generation = opt_int(req, "generation")
    if generation is None or generation < 0:
        bad("'generation' must be a non-negative integer")
    dep.ensure()
    relative = f"profiles/{generation}"
    profile_path = os.path.join(dep.root, relative)
    # back to a previous generation: its own profile file, if still there, is the better one
    if "profile" in req and not (req.get("ifMissing") and os.path.isfile(profile_path)):
        write_atomic(profile_path, dumps(req["profile"]))
    elif not os.path.isfile(profile_path):
        raise Failure(f"no profile {relative} and none given")
    link = os.path.join(dep.root, "current")
    previous = current(dep)
    tmp = os.path.join(dep.root, f".current.tmp-{os.getpid()}")
    remove(tmp)
    os.symlink(relative, tmp)
    try:
        os.replace(tmp, link)
    except OSError as e:
        remove(tmp)
        raise Failure(f"cannot switch {link}: {e}") from None
    fsync_dir(dep.root)
    if "manifest" in req:
        write_atomic(os.path.join(dep.root, "manifest.json"), dumps(req["manifest"]))
    return {"current": relative, "previous": previous}


def cmd_read_manifest(req: dict[str, Any]) -> dict[str, Any]:
    manifest = read_json(os.path.join(Deployment(req).root, "manifest.json"))
    if manifest is None:
        return {}
    if not isinstance(manifest, dict):
        raise Failure("manifest.json does not hold a JSON object")
    return manifest
