"""What every target environment offers: run a shell command (with streamed stdin), start
one to talk to line by line, and close. Everything else — store queries, transfers,
files — is built on these."""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from reconciler.errors import UserError

Stdin = bytes | AsyncIterator[bytes] | None


@dataclass(frozen=True)
class RunResult:
    exit_status: int
    stdout: bytes
    stderr: bytes


class TargetError(UserError):
    """A machine could not be reached or refused an operation; reported per machine (and,
    where nothing more specific catches it, as an error without a traceback)."""

    def __init__(self, machine: str, message: str) -> None:
        super().__init__(f"{machine}: {message}")
        self.machine = machine


class Channel(Protocol):
    """A running command on a target, talked to line by line."""

    async def send(self, line: bytes) -> None: ...
    async def receive(self) -> bytes: ...  # b"" once it has ended
    async def stop(self) -> None: ...  # kill it; what it was doing is abandoned


class Target(ABC):
    def __init__(self, machine: str, state_dir: str) -> None:
        self.machine = machine
        self.state_dir = state_dir
        self._commands: dict[str, bool] = {}

    @property
    def python(self) -> str:
        """The python3 the agent runs with (SPEC §3: the target has one on its PATH)."""
        return "python3"

    @property
    def store_dir(self) -> str:
        return f"{self.state_dir}/store"

    @abstractmethod
    async def run(self, command: str, stdin: Stdin = None) -> RunResult:
        """Run `command` with sh on the target; stdin is sent as given, streamed."""

    @abstractmethod
    async def start(self, command: str) -> Channel:
        """Start `command` with sh on the target and keep talking to it: lines in, lines
        out (the agent's serve mode). Its stderr is discarded."""

    @abstractmethod
    async def close(self) -> None: ...

    async def check(self, command: str, stdin: Stdin = None) -> RunResult:
        result = await self.run(command, stdin)
        if result.exit_status != 0:
            err = result.stderr.decode(errors="replace").strip()
            raise TargetError(
                self.machine, f"`{command[:80]}` failed ({result.exit_status}): {err}"
            )
        return result

    async def has_command(self, name: str) -> bool:
        if name not in self._commands:
            found = await self.run(f"command -v {shlex.quote(name)} >/dev/null 2>&1")
            self._commands[name] = found.exit_status == 0
        return self._commands[name]

    async def read_file(self, path: str) -> bytes | None:
        q = shlex.quote(path)
        result = await self.run(f"test -f {q} && cat {q}")
        return result.stdout if result.exit_status == 0 else None

    async def write_file(self, path: str, data: bytes, mode: str = "0644") -> None:
        """Written under a temporary name and renamed: readers see old or new, never half."""
        q, tmp = shlex.quote(path), shlex.quote(f"{path}.tmp.{id(data)}")
        await self.check(
            f'mkdir -p "$(dirname {q})" && umask 077 && cat > {tmp} && chmod {mode} {tmp} '
            f"&& mv -f {tmp} {q}",
            data,
        )
