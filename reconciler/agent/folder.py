"""The state of a `process` service that moves with `moveState: true` (SPEC §12): its
state folder as a tar snapshot, restored into place on the new machine in one rename."""

from __future__ import annotations

import os
import shutil
import tarfile
from typing import Any

from .files import fsync_dir
from .layout import Deployment
from .request import Failure, Instance


def snapshot(dep: Deployment, service: str, inst: Instance | None, path: str) -> dict[str, Any]:
    state = dep.state(service)
    dep.ensure()
    target = path + ".tar"
    tmp = target + ".part"
    with tarfile.open(tmp, "w") as tar:
        if os.path.isdir(state):
            for entry in sorted(os.listdir(state)):
                tar.add(os.path.join(state, entry), arcname=entry)
    os.replace(tmp, target)
    fsync_dir(os.path.dirname(target))
    return {"path": target}


def restore(dep: Deployment, service: str, inst: Instance | None, source: str) -> dict[str, Any]:
    state = dep.state(service)
    parent = os.path.dirname(state)
    os.makedirs(parent, exist_ok=True)
    fresh = f"{state}.restoring"
    shutil.rmtree(fresh, ignore_errors=True)
    os.makedirs(fresh)
    with tarfile.open(source) as tar:
        members = tar.getmembers()
        for m in members:
            _check(m)
        if hasattr(tarfile, "tar_filter"):  # checked above; the filter keeps 3.12+ quiet
            tar.extraction_filter = tarfile.tar_filter
        for m in members:
            tar.extract(m, fresh, set_attrs=True)
    old = f"{state}.replaced"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(state):
        os.rename(state, old)
    os.rename(fresh, state)
    shutil.rmtree(old, ignore_errors=True)
    fsync_dir(parent)
    return {"path": state}


def _check(member: tarfile.TarInfo) -> None:
    """Only plain files, folders and links that stay inside the state folder."""
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or ".." in parts:
        raise Failure(f"snapshot entry {name!r} leads outside the state folder")
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith("/") or ".." in target.replace("\\", "/").split("/"):
            raise Failure(f"snapshot link {name!r} leads outside the state folder")
    elif not (member.isfile() or member.isdir()):
        raise Failure(f"snapshot entry {name!r} is neither a file nor a folder")
