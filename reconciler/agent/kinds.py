"""The one table of activation types (SPEC §2.5): what each does to activate, deactivate,
report its status, and snapshot or restore its state (None: it keeps no state)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from . import folder, package, process, sqlite, wrapper
from .request import Instance, bad

if TYPE_CHECKING:
    from collections.abc import Callable

    from .layout import Deployment

    # (deployment, service, instance if the request names one, snapshot or source path)
    StateFn = Callable[[Deployment, str, Optional[Instance], str], dict[str, Any]]


class Kind(NamedTuple):
    activate: Callable[[Deployment, Instance, str], dict[str, Any]]
    deactivate: Callable[[Deployment, Instance], dict[str, Any]]
    status: Callable[[Deployment, Instance], dict[str, Any]]
    snapshot: StateFn | None
    restore: StateFn | None


TYPES: dict[str, Kind] = {
    # a process keeps no state of its own; with moveState its state folder moves
    "process": Kind(
        process.activate, process.deactivate, process.status, folder.snapshot, folder.restore
    ),
    "sqlite-database": Kind(
        sqlite.activate, sqlite.deactivate, sqlite.status, sqlite.snapshot, sqlite.restore
    ),
    "wrapper": Kind(
        wrapper.activate, wrapper.deactivate, wrapper.status, wrapper.snapshot, wrapper.restore
    ),
    "package": Kind(package.activate, package.deactivate, package.status, None, None),
}


def kind(inst: Instance) -> Kind:
    found = TYPES.get(inst.type)
    if found is None:
        bad(f"unknown instance type {inst.type!r}")
    return found
