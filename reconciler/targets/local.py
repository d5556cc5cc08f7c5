"""`local`: a machine simulated on this host — its own folder and loopback address."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys

from reconciler.targets.base import Channel, RunResult, Stdin, Target


class LocalTarget(Target):
    @property
    def python(self) -> str:
        # this host's own interpreter: no PATH lookup (a pyenv shim costs 80 ms a call)
        return shlex.quote(sys.executable)

    async def _spawn(self, command: str, stderr: int) -> asyncio.subprocess.Process:
        os.makedirs(self.state_dir, exist_ok=True)
        return await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            cwd=self.state_dir,
            limit=1 << 24,  # the agent's answer is one line, and may carry a log tail
        )

    async def run(self, command: str, stdin: Stdin = None) -> RunResult:
        proc = await self._spawn(command, asyncio.subprocess.PIPE)
        assert proc.stdin is not None
        feeding = asyncio.create_task(_feed(proc.stdin, stdin))
        try:
            stdout, stderr = await _collect(proc)
            await feeding
        except asyncio.CancelledError:
            # interrupted: what it was doing is undone by the rollback, not finished behind
            # its back (a half-done activation must not act after the rollback has)
            feeding.cancel()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        return RunResult(await proc.wait(), stdout, stderr)

    async def start(self, command: str) -> Channel:
        return _LocalChannel(await self._spawn(command, asyncio.subprocess.DEVNULL))

    async def close(self) -> None:
        return None


class _LocalChannel:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc, self.stdin, self.stdout = proc, proc.stdin, proc.stdout

    async def send(self, line: bytes) -> None:
        self.stdin.write(line)
        await self.stdin.drain()

    async def receive(self) -> bytes:
        return await self.stdout.readline()

    async def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()


async def _feed(writer: asyncio.StreamWriter, stdin: Stdin) -> None:
    try:
        if isinstance(stdin, bytes):
            writer.write(stdin)
            await writer.drain()
        elif stdin is not None:
            async for chunk in stdin:
                writer.write(chunk)
                await writer.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the command stopped reading: its exit status says why
    finally:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            writer.close()


async def _collect(proc: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
    assert proc.stdout is not None and proc.stderr is not None
    out, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
    return out, err
