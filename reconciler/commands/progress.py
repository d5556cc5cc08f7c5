"""Transfer progress: rich bars on a terminal, one line per machine otherwise."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING

from reconciler.text import human_bytes, plural

if TYPE_CHECKING:
    from rich.progress import TaskID

    from reconciler.execute.transfer import MachineTransfer


def describe(result: MachineTransfer) -> str:
    if not result.sent:
        return f"{result.machine}: up to date"
    return (
        f"{result.machine}: sent {plural(len(result.sent), 'path')} "
        f"({human_bytes(result.size)}; {human_bytes(result.wire_bytes)} on the wire, "
        f"{result.compression}) in {result.seconds:.1f} s"
    )


class PlainProgress:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def start(self, machine: str, paths: int, size: int) -> None:
        return None

    def advance(self, machine: str, wire_bytes: int) -> None:
        return None

    def finish(self, machine: str, result: MachineTransfer) -> None:
        if not self.quiet:
            print(describe(result), file=sys.stderr)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class BarProgress:
    """Bars count bytes on the wire; the total shown is the unpacked size."""

    def __init__(self) -> None:
        # imported here: rich is a tenth of the start of a command that shows no bars
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description:<20}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self.tasks: dict[str, TaskID] = {}

    def start(self, machine: str, paths: int, size: int) -> None:
        self.tasks[machine] = self.progress.add_task(machine, total=size or None)

    def advance(self, machine: str, wire_bytes: int) -> None:
        self.progress.advance(self.tasks[machine], wire_bytes)

    def finish(self, machine: str, result: MachineTransfer) -> None:
        task = self.tasks[machine]
        self.progress.update(task, completed=result.size, total=result.size or 1)
        self.progress.console.print(describe(result))

    def __enter__(self) -> BarProgress:
        self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.stop()


def make_progress(quiet: bool) -> PlainProgress | BarProgress:
    return BarProgress() if sys.stderr.isatty() and not quiet else PlainProgress(quiet)
