"""Store operations on any target, built on `Target.run`: which paths it has, and
receiving missing ones as one tar stream that is unpacked under a temporary name and
renamed into place — an interrupted transfer leaves no partial path visible.

A target that offers an OpenSSH command (`ssh`) is asked and sent to in one session of
it (`deliver`): the query, then the stream, the packer's output spliced into the client in
the kernel, so no byte passes through Python; any other target, or one the client cannot
reach, is asked and sent to through `Target.run`.

The target needs only sh, tar and python3 (SPEC §3); zstd or gzip when compressing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import tempfile
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from reconciler.store.local import META, LocalStore
from reconciler.targets.base import Target, TargetError

_CHUNK = 256 * 1024
_PIPE_SIZE = 1 << 20  # Linux's default maximum for an unprivileged pipe
# From this size on, tar writes 128 KiB records rather than 10 KiB: a tenth of the writes,
# splices and wake-ups per byte; the zeros padding the stream to whole records (under
# 128 KiB) are then under 2% of it
_BIG = 8 << 20
_REPORTED = 4 << 20  # progress is told of the bytes moved in steps of this much
_LINE_LIMIT = 64 << 20  # the longest line read from a process: a session's answer of all paths
_STARTED = b"reconciler: receiving\n"  # the machine's shell printed it: the client got there

# stdin: one line {"path": "content hash", …} (read alone: in a session more follows once
# it has answered); prints the paths present with that hash, as one line
_PRESENT = r"""
import json, os, sys
store = sys.argv[1]
want = json.loads(sys.stdin.readline())
have = []
for path, expected in want.items():
    try:
        with open(os.path.join(store, ".meta", path + ".json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        continue
    if meta.get("content_hash") == expected and os.path.isdir(os.path.join(store, path)):
        have.append(path)
print(json.dumps(have))
"""

# argv: store, incoming folder. Started beside the unpacking (its start-up off the end of
# the transfer), it waits for the line saying the unpacking succeeded; then moves each
# unpacked path, then its meta, into place; a path already there with the same meta is
# kept, one with another content hash replaced.
_FINALIZE = r"""
import os, shutil, sys
if sys.stdin.readline() != "unpacked\n":
    sys.exit(1)  # the unpacking failed, and said why
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
        f"mkdir -p {store} && {target.python} -c {shlex.quote(_PRESENT)} {store}",
        json.dumps(expected).encode(),
    )
    try:
        return set(json.loads(result.stdout))
    except ValueError:
        raise TargetError(target.machine, "unexpected answer to the store query") from None


async def choose_compression(target: Target, setting: str, local: bool) -> str:
    """auto: zstd when both ends have it, else none; never for a machine on this host
    (`local`: no link to save bytes on)."""
    if setting != "auto":
        return setting
    if local:
        return "none"
    if shutil.which("zstd") and await target.has_command("zstd"):
        return "zstd"
    return "none"


# zstd -1: 2% more bytes than -3 for 35% less CPU; CPU, not the link, bounds a fast network
_COMPRESS = {"zstd": "zstd -q -c -T0 -1", "gzip": "gzip -c -1", "none": ""}
_DECOMPRESS = {"zstd": "zstd -q -d -c", "gzip": "gzip -d -c", "none": ""}


@runtime_checkable
class OpenSshReachable(Protocol):
    async def openssh_command(self, command: str) -> list[str] | None: ...


@dataclass(frozen=True)
class Delivery:
    sent: list[str]  # the paths the target lacked, sent now
    compression: str  # what the stream used ("none" when nothing was sent)
    wire_bytes: int


async def deliver(
    target: Target,
    store: LocalStore,
    expected: dict[str, str],
    setting: str,
    local: bool,
    session: bool = False,
    on_missing: Callable[[list[str]], None] = lambda paths: None,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> Delivery:
    """Send the target the paths among `expected` (path → content hash) it lacks, with
    compression `setting` (`choose_compression`); `on_missing` hears which before any byte
    goes. `session`: nothing else will be asked of the target, so when it offers an OpenSSH
    command, ask and send in one session of it (a single handshake: it answers the store
    query, then unpacks the stream). Else asked over `Target.run` (a connection kept for
    what follows), and sent as `receive` does."""
    if not expected:
        on_missing([])
        return Delivery([], "none", 0)
    if session and isinstance(target, OpenSshReachable):
        argv = await target.openssh_command(_session_command(target.store_dir, target.python))
        if argv is not None:
            done = await _session(target.machine, argv, store, expected, setting, local,
                                  on_missing, on_bytes)  # fmt: skip
            if done is not None:
                return done
    have, compression = await asyncio.gather(
        present(target, expected), choose_compression(target, setting, local)
    )
    missing = sorted(set(expected) - have)
    on_missing(missing)
    if not missing:
        return Delivery([], "none", 0)
    return Delivery(
        missing, compression, await receive(target, store, missing, compression, on_bytes)
    )


def _session_command(store_dir: str, python: str) -> str:
    """Answer the store query (a line of JSON in; the paths present, then the compressors
    there, a line each out), then read a compression and the stream; the end of its input
    instead (nothing to send) ends it having changed nothing."""
    s = shlex.quote(store_dir)
    unpack = " ".join(f"{c}) {_unpack_command(store_dir, c)};;" for c in _COMPRESS)
    return (
        f"mkdir -p {s} && {python} -c {shlex.quote(_PRESENT)} {s} || exit 1; "
        'Z=; for c in zstd gzip; do command -v $c >/dev/null 2>&1 && Z="$Z $c"; done; '
        'echo "compressors:$Z"; '
        f'IFS= read -r C || exit 0; case "$C" in {unpack} esac'
    )


async def _session(
    machine: str,
    ssh: list[str],
    store: LocalStore,
    expected: dict[str, str],
    setting: str,
    local: bool,
    on_missing: Callable[[list[str]], None],
    on_bytes: Callable[[int], None],
) -> Delivery | None:
    """`deliver` through the OpenSSH client `ssh` running `_session_command`; None when it
    did not answer the query (it never reached the machine, or was refused there): nothing
    was changed, and the caller asks over its own connection, which says why."""
    client, sending_w = await _start_fed(ssh)
    assert client.stdout is not None
    try:
        await asyncio.to_thread(_write_all, sending_w, json.dumps(expected).encode() + b"\n")
        answer = _answer(await client.stdout.readline(), await client.stdout.readline())
    except (BrokenPipeError, ValueError):
        answer = None
    except BaseException:
        await _abandon(client, sending_w)
        raise
    if answer is None:  # closing its stdin ends it if it still runs: no compression comes
        await _abandon(client, sending_w, stop=False)
        return None
    missing = sorted(set(expected) - answer[0])
    on_missing(missing)
    try:
        compression = _compression(machine, setting, local, answer[1]) if missing else None
        if compression is not None:
            os.write(sending_w, f"{compression}\n".encode())
    except BaseException as exc:
        await _abandon(client, sending_w)
        if isinstance(exc, OSError):
            raise TargetError(machine, f"connection lost: {exc}") from None
        raise
    if compression is None:
        err = await _abandon(client, sending_w, stop=False)
        if client.returncode != 0:
            raise TargetError(machine, f"the store query failed ({client.returncode}): {err}")
        return Delivery([], "none", 0)
    sent = await _stream(machine, client, sending_w, store.root, missing, compression, on_bytes)
    if sent is None:
        raise TargetError(machine, "connection lost before the store paths were sent")
    return Delivery(missing, compression, sent)


async def _abandon(client: asyncio.subprocess.Process, sending: int, stop: bool = True) -> str:
    """Close the client's stdin (the session reads no compression and ends), kill it unless
    `stop` is False, and reap it; what it said on stderr."""
    os.close(sending)
    if stop:
        _stop(client)
    _, err = await client.communicate()
    return err.decode(errors="replace").strip()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _answer(paths: bytes, compressors: bytes) -> tuple[set[str], list[str]]:
    """The session's answer to the store query; ValueError if it did not give one."""
    have = json.loads(paths)
    tag, found, tools = compressors.decode().partition(":")
    if not isinstance(have, list) or tag != "compressors" or not found:
        raise ValueError("no answer to the store query")
    return set(have), tools.split()


def _compression(machine: str, setting: str, local: bool, there: list[str]) -> str:
    """`choose_compression` with the compressors the machine has known already."""
    if setting == "auto":
        return "zstd" if not local and "zstd" in there and shutil.which("zstd") else "none"
    if setting != "none" and setting not in there:
        raise TargetError(machine, f"compression {setting}: not installed there")
    return setting


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
    command = _unpack_command(target.store_dir, compression)
    if isinstance(target, OpenSshReachable) and (argv := await target.openssh_command(command)):
        sent = await _send_through(target.machine, argv, store.root, paths, compression, on_bytes)
        if sent is not None:
            return sent
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


def _unpack_command(store_dir: str, compression: str) -> str:
    """Unpack stdin into a new incoming folder, then move each path into place; the
    folder goes whatever happens. GNU tar reads 128 KiB at a time (half its CPU time)."""
    incoming = f"{store_dir}/.incoming/{uuid.uuid4().hex}"
    s, t = shlex.quote(store_dir), shlex.quote(incoming)
    unpack = 'tar -x $B -f - -C "$T"'
    if compression != "none":
        unpack = f"{_DECOMPRESS[compression]} | {unpack}"
    return (
        f"echo {_STARTED.decode().strip()!r}; "
        f'set -e; T={t}; mkdir -p "$T" {s}/{META}; '
        'trap \'chmod -R u+w "$T" 2>/dev/null; rm -rf "$T"\' EXIT HUP INT TERM PIPE; '
        "B=; if tar --version 2>/dev/null | grep -q 'GNU tar'; then B='-b 256 -B'; fi; "
        f'({unpack} && echo unpacked) | python3 -c {shlex.quote(_FINALIZE)} {s} "$T"'
    )


async def _send_through(
    machine: str,
    ssh: list[str],
    root: Path,
    paths: list[str],
    compression: str,
    on_bytes: Callable[[int], None],
) -> int | None:
    """Pack `paths` into the OpenSSH client `ssh`; the bytes sent, or None when the client
    never reached the machine's shell (nothing was changed there)."""
    client, sending_w = await _start_fed(ssh)
    return await _stream(machine, client, sending_w, root, paths, compression, on_bytes)


async def _start_fed(ssh: list[str]) -> tuple[asyncio.subprocess.Process, int]:
    """The OpenSSH client `ssh`, reading a (widened) pipe: it and the pipe's writing end."""
    sending_r, sending_w = os.pipe()
    _widen(sending_r)
    try:
        client = await _start(ssh, stdin=sending_r, stdout=asyncio.subprocess.PIPE)
    except BaseException:
        os.close(sending_w)
        raise
    finally:
        os.close(sending_r)
    return client, sending_w


async def _stream(
    machine: str,
    client: asyncio.subprocess.Process,
    sending: int,
    root: Path,
    paths: list[str],
    compression: str,
    on_bytes: Callable[[int], None],
) -> int | None:
    """Pack `paths` into pipe `sending`, the stdin of the running OpenSSH `client`, whose
    command unpacks them; closes `sending`. The bytes sent, or None when the client exited
    without reaching that command (nothing was changed there)."""
    loop = asyncio.get_running_loop()

    def report(n: int) -> None:
        loop.call_soon_threadsafe(on_bytes, n)

    relay: asyncio.Future[int] | None = None  # once started, it closes `sending`
    try:
        with _members(root, paths) as members:
            packed_r, packed_w = os.pipe()
            try:
                _widen(packed_r)
                argv = _pack_argv(root, paths, members, compression)
                packer = await _start(argv, stdout=packed_w)
            except BaseException:
                os.close(packed_r)
                raise
            finally:
                os.close(packed_w)
            relay = asyncio.ensure_future(asyncio.to_thread(_relay, packed_r, sending, report))
            talk = asyncio.ensure_future(client.communicate())
            try:
                sent, (out, err) = await asyncio.gather(relay, talk)
                packed = await packer.wait()
            except BaseException:
                # stopped both, the relay ends with them (its pipes reach their ends)
                _stop(packer)
                _stop(client)
                await asyncio.gather(relay, talk, packer.wait(), return_exceptions=True)
                raise
    except BaseException:
        if relay is None:
            await _abandon(client, sending)
        raise
    # the client's failure first: a packer cut off by it fails too, and says nothing
    if client.returncode == 255 and not out.startswith(_STARTED):
        return None  # e.g. a setting of ~/.ssh/config asyncssh reads otherwise
    if client.returncode != 0:
        message = err.decode(errors="replace").strip()
        raise TargetError(machine, f"receiving store paths failed ({client.returncode}): {message}")
    assert packer.stderr is not None
    if packed != 0:
        problem = (await packer.stderr.read()).decode(errors="replace").strip()
        raise RuntimeError(f"packing store paths failed: {problem}")
    return sent


def _relay(source: int, sink: int, report: Callable[[int], None]) -> int:
    """Move everything from pipe `source` to pipe `sink` inside the kernel; the bytes moved.
    Closes both: the client sees the stream's end, the packer a broken pipe."""
    sent = unreported = 0
    try:
        while n := _move(source, sink):
            sent, unreported = sent + n, unreported + n
            if unreported >= _REPORTED:
                report(unreported)
                unreported = 0
    except BrokenPipeError:
        pass  # the client ended early: its exit status says why
    finally:
        os.close(source)
        os.close(sink)
    if unreported:
        report(unreported)
    return sent


def _widen(pipe: int) -> None:
    """Room for a whole splice in the pipe (Linux; elsewhere it stays as it is)."""
    resize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if resize is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe, resize, _PIPE_SIZE)


def _move(source: int, sink: int) -> int:
    if hasattr(os, "splice"):  # Linux
        return os.splice(source, sink, _PIPE_SIZE)
    chunk = os.read(source, _PIPE_SIZE)
    return os.write(sink, chunk) if chunk else 0


async def _start(
    argv: list[str], stdin: int | None = None, stdout: int | None = None
) -> asyncio.subprocess.Process:
    """A process in its own process group (stopping it stops its children too)."""
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=stdin,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        limit=_LINE_LIMIT,
    )


def _stop(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def _members(root: Path, paths: list[str]) -> Iterator[Path]:
    """The tar member list of `paths` (each and its meta file), as a file for `tar -T`."""
    with tempfile.NamedTemporaryFile("w", prefix="members-", dir=root / ".tmp") as members:
        members.writelines(f"{m}\n" for p in paths for m in (p, f"{META}/{p}.json"))
        members.flush()
        yield Path(members.name)


def _pack_argv(root: Path, paths: list[str], members: Path, compression: str) -> list[str]:
    store = LocalStore(root)
    size = sum(info.size for p in paths if (info := store.info(p)) is not None)
    tar = (
        f"tar {'-b 256 ' if size >= _BIG else ''}--sort=name --numeric-owner --owner=0 "
        '--group=0 --verbatim-files-from -C "$1" -cf - -T "$2"'
    )
    script = f"{tar} | {_COMPRESS[compression]}" if compression != "none" else tar
    return ["bash", "-o", "pipefail", "-c", script, "sh", str(root), str(members)]


async def _tar_stream(
    root: Path, paths: list[str], compression: str
) -> AsyncGenerator[bytes, None]:
    with _members(root, paths) as members:
        argv = _pack_argv(root, paths, members, compression)
        async with contextlib.aclosing(_pack(argv)) as chunks:
            async for chunk in chunks:
                yield chunk


async def _pack(argv: list[str]) -> AsyncGenerator[bytes, None]:
    proc = await _start(argv, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while chunk := await proc.stdout.read(_CHUNK):
            yield chunk
    except BaseException:
        # tar and zstd hold the pipe open, and asyncio notices its end only while reading:
        # kill the whole group, then read to the end and reap
        _stop(proc)
        await proc.communicate()
        raise
    if await proc.wait() != 0:
        err = (await proc.stderr.read()).decode(errors="replace").strip()
        raise RuntimeError(f"packing store paths failed: {err}")
