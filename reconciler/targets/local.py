"""`local`: a machine simulated on this host — its own folder and loopback address."""

from __future__ import annotations

import asyncio
import contextlib
import os

from reconciler.targets.base import RunResult, Stdin, Target


class LocalTarget(Target):
    async def run(self, command: str, stdin: Stdin = None) -> RunResult:
        os.makedirs(self.state_dir, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.state_dir,
        )
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

    async def close(self) -> None:
        return None


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
