"""Step 3: per machine, ask which closure paths it has and send only the missing ones,
as one stream per machine; machines in parallel. Nothing running is touched."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

from reconciler.desired.state import DesiredMachine
from reconciler.store.local import LocalStore, PathInfo
from reconciler.targets.base import Target, TargetError
from reconciler.targets.store_paths import deliver

# no link between them and this host to save bytes on: compression would only cost CPU
ON_THIS_HOST = ("local", "container")


class Progress(Protocol):
    def start(self, machine: str, paths: int, size: int) -> None: ...
    def advance(self, machine: str, wire_bytes: int) -> None: ...
    def finish(self, machine: str, result: MachineTransfer) -> None: ...


@dataclass
class MachineTransfer:
    machine: str
    sent: list[str] = field(default_factory=list)  # paths sent now
    size: int = 0  # their size unpacked
    wire_bytes: int = 0
    compression: str = "none"
    seconds: float = 0.0
    present: dict[str, str] = field(default_factory=dict)  # path → content hash, after


class TransferFailed(Exception):
    def __init__(self, errors: dict[str, str], done: dict[str, MachineTransfer]) -> None:
        self.errors, self.done = errors, done
        super().__init__("\n".join(f"{m}: {e}" for m, e in sorted(errors.items())))


async def transfer_all(
    machines: list[DesiredMachine],
    targets: dict[str, Target],
    store: LocalStore,
    infos: dict[str, PathInfo],
    max_concurrent: int,
    progress: Progress,
    extra: tuple[str, ...] = (),
    alone: bool = False,
) -> dict[str, MachineTransfer]:
    """`extra`: store paths every machine gets besides its closure (the agent). `alone`:
    nothing follows the transfer (--copy-only), so no connection is kept for later."""
    limit = asyncio.Semaphore(max_concurrent)

    async def one(m: DesiredMachine) -> MachineTransfer:
        async with limit:
            target = targets[m.name]
            return await transfer_machine(m, target, store, infos, progress, extra, alone)

    results = await asyncio.gather(*(one(m) for m in machines), return_exceptions=True)
    done: dict[str, MachineTransfer] = {}
    errors: dict[str, str] = {}
    for m, r in zip(machines, results, strict=True):
        if isinstance(r, TargetError):
            errors[m.name] = str(r).removeprefix(f"{m.name}: ")
        elif isinstance(r, BaseException):
            raise r
        else:
            done[m.name] = r
    if errors:
        raise TransferFailed(errors, done)
    return done


async def transfer_machine(
    machine: DesiredMachine,
    target: Target,
    store: LocalStore,
    infos: dict[str, PathInfo],
    progress: Progress,
    extra: tuple[str, ...] = (),
    alone: bool = False,
) -> MachineTransfer:
    started = time.monotonic()
    expected = {p: infos[p].content_hash for p in (*machine.closure, *extra)}
    result = MachineTransfer(machine.name)

    def begin(missing: list[str]) -> None:
        result.sent, result.size = missing, sum(infos[p].size for p in missing)
        progress.start(machine.name, len(missing), result.size)

    done = await deliver(
        target,
        store,
        expected,
        machine.compression,
        local=machine.target_env in ON_THIS_HOST,
        session=alone,
        on_missing=begin,
        on_bytes=lambda n: progress.advance(machine.name, n),
    )
    result.compression, result.wire_bytes = done.compression, done.wire_bytes
    result.present = expected
    result.seconds = time.monotonic() - started
    progress.finish(machine.name, result)
    return result
