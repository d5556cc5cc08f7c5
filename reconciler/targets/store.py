"""Store operations on any target, built on `Target.run`: which paths it has, and
receiving missing ones as one tar stream that is unpacked under a temporary name and
renamed into place — an interrupted transfer leaves no partial path visible.

The target needs only sh, tar and python3 (SPEC §3); zstd or gzip when compressing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import tempfile
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path

from reconciler.store.local import META, LocalStore
from reconciler.targets.base import Target, TargetError

_CHUNK = 256 * 1024

# stdin: {"path": "content hash", …}; prints the paths present with that hash
_PRESENT = r"""
import json, os, sys
store = sys.argv[1]
want = json.load(sys.stdin)
have = []
for path, expected in want.items():
    try:
        with open(os.path.join(store, ".meta", path + ".json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        continue
    if meta.get("content_hash") == expected and os.path.isdir(os.path.join(store, path)):
        have.append(path)
json.dump(have, sys.stdout)
"""

# argv: store, incoming folder. Moves each unpacked path, then its meta, into place; a
# path already there with the same meta is kept, one with another content hash replaced.
_FINALIZE = r"""
import os, shutil, sys
store, incoming = sys.argv[1], sys.argv[2]
def writable(root):
    for d, _, _ in os.walk(root):
        os.chmod(d, 0o755)
def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None
for path in sorted(os.listdir(incoming)):
    if path == ".meta":
        continue
    src, dst = os.path.join(incoming, path), os.path.join(store, path)
    meta_src = os.path.join(incoming, ".meta", path + ".json")
    meta_dst = os.path.join(store, ".meta", path + ".json")
    if os.path.isdir(dst) and read(meta_dst) == read(meta_src):
        continue  # completed by an earlier or concurrent transfer
    if os.path.lexists(meta_dst):
        os.unlink(meta_dst)  # first the meta: a path without one never counts as present
    if os.path.lexists(dst):
        writable(dst)
        shutil.rmtree(dst)
    os.chmod(src, 0o755)  # moving a directory updates its '..': needs write permission
    os.rename(src, dst)
    os.chmod(dst, 0o555)
    os.rename(meta_src, meta_dst)
"""


async def present(target: Target, expected: dict[str, str]) -> set[str]:
    """The paths among `expected` (path → content hash) the target has, hash matching."""
    if not expected:
        return set()
    store = shlex.quote(target.store_dir)
    result = await target.check(
        f"mkdir -p {store} && python3 -c {shlex.quote(_PRESENT)} {store}",
        json.dumps(expected).encode(),
    )
    try:
        return set(json.loads(result.stdout))
    except ValueError:
        raise TargetError(target.machine, "unexpected answer to the store query") from None


async def choose_compression(target: Target, setting: str, local: bool) -> str:
    """auto: zstd when both ends have it, else none; never for a machine on this host."""
    if setting != "auto":
        return setting
    if local:
        return "none"
    if shutil.which("zstd") and await target.has_command("zstd"):
        return "zstd"
    return "none"


_COMPRESS = {"zstd": "zstd -q -c -T0 -3", "gzip": "gzip -c -1", "none": ""}
_DECOMPRESS = {"zstd": "zstd -q -d -c", "gzip": "gzip -d -c", "none": ""}


async def receive(
    target: Target,
    store: LocalStore,
    paths: list[str],
    compression: str,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> int:
    """Send `paths` from the local store as one stream; returns the bytes sent."""
    if not paths:
        return 0
    if compression != "none" and not await target.has_command(compression):
        raise TargetError(target.machine, f"compression {compression}: not installed there")
    incoming = f"{target.store_dir}/.incoming/{uuid.uuid4().hex}"
    s, t = shlex.quote(target.store_dir), shlex.quote(incoming)
    unpack = 'tar -x -f - -C "$T"'
    if compression != "none":
        unpack = f"{_DECOMPRESS[compression]} | {unpack}"
    command = (
        f'set -e; T={t}; mkdir -p "$T" {s}/{META}; '
        'trap \'chmod -R u+w "$T" 2>/dev/null; rm -rf "$T"\' EXIT HUP INT TERM PIPE; '
        f"{unpack}; "
        f'python3 -c {shlex.quote(_FINALIZE)} {s} "$T"'
    )
    sent = 0

    async def counted(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        nonlocal sent
        async for chunk in chunks:
            sent += len(chunk)
            on_bytes(len(chunk))
            yield chunk

    # closed here, not whenever the garbage collector gets to it: a failed transfer must
    # stop the packer at once
    async with contextlib.aclosing(_tar_stream(store.root, paths, compression)) as chunks:
        await target.check(command, counted(chunks))
    return sent


async def _tar_stream(
    root: Path, paths: list[str], compression: str
) -> AsyncGenerator[bytes, None]:
    with tempfile.NamedTemporaryFile("w", prefix="members-", dir=root / ".tmp") as members:
        members.writelines(f"{m}\n" for p in paths for m in (p, f"{META}/{p}.json"))
        members.flush()
        async with contextlib.aclosing(_pack(root, Path(members.name), compression)) as chunks:
            async for chunk in chunks:
                yield chunk


async def _pack(root: Path, members: Path, compression: str) -> AsyncGenerator[bytes, None]:
    tar = (
        "tar --sort=name --numeric-owner --owner=0 --group=0 "
        '--verbatim-files-from -C "$1" -cf - -T "$2"'
    )
    script = f"{tar} | {_COMPRESS[compression]}" if compression != "none" else tar
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-o",
        "pipefail",
        "-c",
        script,
        "sh",
        str(root),
        str(members),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: stopping it stops tar and zstd too
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while chunk := await proc.stdout.read(_CHUNK):
            yield chunk
    except BaseException:
        # tar and zstd hold the pipe open, and asyncio notices its end only while reading:
        # kill the whole group, then read to the end and reap
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.communicate()
        raise
    if await proc.wait() != 0:
        err = (await proc.stderr.read()).decode(errors="replace").strip()
        raise RuntimeError(f"packing store paths failed: {err}")
