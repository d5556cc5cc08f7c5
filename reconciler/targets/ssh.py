"""`ssh`: an existing machine reached over SSH (NixOps' `none`), one asyncssh connection
per machine reused for everything but bulk streams: those go through the OpenSSH client
when there is one (`openssh_command`), which moves bytes at a fraction of the CPU that
asyncssh, pure Python per 32 KiB packet, needs. asyncssh (0.15 s of imports) is imported
only when a connection is made: `apply --copy-only` to a machine whose key is known makes
none (store_paths.deliver asks and sends in one session of the OpenSSH client).

Host keys: a `hostKey` in the model pins the key; without it the first key seen is
trusted and recorded, and a later mismatch is refused. The OpenSSH client trusts only
the key the asyncssh connection verified or, before it connects, the pinned or recorded
key the connection would demand.

Warm connections (`warm`): `apply --copy-only` starts an OpenSSH master connection to each
machine recorded for the deployment as its first step, so the handshake (0.12 s here,
most of it the server's) runs while the command loads its models and plans; the session
that asks and sends rides on it when its endpoint and demanded key are the same.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from reconciler.targets.base import Channel, RunResult, Stdin, Target, TargetError

if TYPE_CHECKING:
    import asyncssh


class HostKeyStore(Protocol):
    def recorded(self, host: str, port: int) -> str | None: ...
    def record(self, host: str, port: int, key: str) -> None: ...


@dataclass(frozen=True)
class SshEndpoint:
    host: str
    port: int
    user: str
    identity_file: str | None
    host_key: str | None  # pinned "type base64"

    @classmethod
    def of(cls, ssh: Mapping[str, Any]) -> SshEndpoint:
        """From a connection's `ssh` part (DesiredMachine.connection, or as recorded)."""
        return cls(
            ssh["host"],
            ssh.get("port", 22),
            ssh.get("user", "root"),
            ssh.get("identityFile"),
            ssh.get("hostKey"),
        )

    def demanded_key(self, store: HostKeyStore) -> str | None:
        """The host key a connection will demand, known without asking the machine: pinned
        by the model, else recorded when first seen (unless a known_hosts file given to the
        controller, which comes first, is in force)."""
        if self.host_key:
            return " ".join(self.host_key.split()[:2])
        return None if os.environ.get(KNOWN_HOSTS_ENV) else store.recorded(self.host, self.port)


def key_text(key: asyncssh.SSHKey) -> str:
    """'ssh-ed25519 AAAA…' without a comment: the form hostKey takes."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


class _HostKeyCheck:
    def __init__(self, endpoint: SshEndpoint, store: HostKeyStore) -> None:
        self.endpoint, self.store = endpoint, store
        self.refusal: str | None = None
        self.first_seen: str | None = None

    def validate(self, host: str, addr: str, port: int, key: Any) -> bool:
        seen = key_text(key)
        listed = _known_hosts(self.endpoint.host, addr, port)
        if self.endpoint.host_key:
            expected = " ".join(self.endpoint.host_key.split()[:2])
            source = "pinned by hostKey in the model"
        elif listed:
            if seen in listed:
                return True
            expected = " or ".join(listed)
            source = f"listed in {os.environ.get(KNOWN_HOSTS_ENV)}"
        else:
            expected = self.store.recorded(self.endpoint.host, self.endpoint.port) or ""
            source = "recorded when first connected"
            if not expected:
                self.first_seen = seen
                return True
        if seen == expected:
            return True
        self.refusal = (
            f"host key of {self.endpoint.host}:{self.endpoint.port} does not match: expected "
            f"{expected} ({source}), got {seen}. Refusing to connect: this may be another "
            "machine. If it was re-installed, set its new key as deployment.ssh.hostKey."
        )
        return False


@functools.cache
def _client_type() -> Callable[[_HostKeyCheck], asyncssh.SSHClient]:
    """asyncssh's client, asking `_HostKeyCheck` about the server's host key."""
    import asyncssh

    class Client(asyncssh.SSHClient):
        def __init__(self, check: _HostKeyCheck) -> None:
            self.check = check

        def validate_host_public_key(self, host: str, addr: str, port: int, key: Any) -> bool:
            return self.check.validate(host, addr, port, key)

    return Client


KNOWN_HOSTS_ENV = "RECONCILER_KNOWN_HOSTS"  # set by `run --known-hosts FILE`


def _known_hosts(host: str, addr: str, port: int) -> list[str]:
    """Keys an OpenSSH known_hosts file lists for this host (the controller's pinning
    when the models give no hostKey); [] without such a file."""
    path = os.environ.get(KNOWN_HOSTS_ENV)
    if not path:
        return []
    import asyncssh

    try:
        trusted = asyncssh.read_known_hosts(path).match(host, addr, port)[0]
    except (OSError, ValueError) as e:
        raise asyncssh.HostKeyNotVerifiable(f"{path}: {e}") from None
    return [key_text(k) for k in trusted]


_CIPHERS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
]


# asyncssh's key exchanges: OpenSSH's default first choice (sntrup761) costs ~0.2 s here
_KEX = [
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group14-sha256",
]
_ALIAS = "reconciler-target"  # the name the OpenSSH client checks the host key under


def _algorithms_for(pinned: str | None) -> list[str] | str:
    """Ask the server for the pinned key's type, or it may show another key it has."""
    return _key_algorithms(pinned) if pinned else "default"


def _key_algorithms(key: str) -> list[str]:
    kind = key.split()[0]
    return ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if kind == "ssh-rsa" else [kind]


class SshTarget(Target):
    def __init__(
        self, machine: str, state_dir: str, endpoint: SshEndpoint, host_keys: HostKeyStore
    ) -> None:
        super().__init__(machine, state_dir)
        self.endpoint = endpoint
        self.host_keys = host_keys
        self._conn: asyncssh.SSHClientConnection | None = None
        self._known_hosts: str | None = None  # for the OpenSSH client: the verified key
        self._connecting = asyncio.Lock()  # one connection, however many commands ask at once

    async def connect(self) -> None:
        import asyncssh

        e = self.endpoint
        check = _HostKeyCheck(e, self.host_keys)
        client = _client_type()(check)
        # with an identityFile, only that key (like IdentitiesOnly); else agent and defaults
        auth: dict[str, Any] = (
            {"client_keys": [os.path.expanduser(e.identity_file)], "agent_path": None}
            if e.identity_file
            else {}
        )
        try:
            self._conn = await asyncssh.connect(
                e.host,
                e.port,
                username=e.user,
                known_hosts=([], [], []),
                server_host_key_algs=_algorithms_for(e.host_key),
                client_factory=lambda: client,
                connect_timeout=15,
                keepalive_interval=15,
                # AES-GCM runs on the CPU's AES instructions: twice as fast as chacha20 here
                encryption_algs=_CIPHERS,
                **auth,
            )
        except asyncssh.HostKeyNotVerifiable:
            raise TargetError(self.machine, check.refusal or "host key refused") from None
        except (OSError, asyncssh.Error) as exc:
            raise TargetError(
                self.machine, f"cannot connect to {e.user}@{e.host}:{e.port}: {exc}"
            ) from None
        if check.first_seen:
            self.host_keys.record(e.host, e.port, check.first_seen)

    async def _connection(self) -> asyncssh.SSHClientConnection:
        async with self._connecting:
            if self._conn is None:
                await self.connect()
        assert self._conn is not None
        return self._conn

    async def run(self, command: str, stdin: Stdin = None) -> RunResult:
        import asyncssh

        conn = await self._connection()
        try:
            proc = await conn.create_process(command, encoding=None)
            if isinstance(stdin, bytes):
                proc.stdin.write(stdin)
            elif stdin is not None:
                async for chunk in stdin:
                    proc.stdin.write(chunk)
                    await proc.stdin.drain()
            proc.stdin.write_eof()
            done = await proc.wait()
        except (OSError, asyncssh.Error) as exc:
            raise TargetError(self.machine, f"connection lost: {exc}") from None
        out = done.stdout if isinstance(done.stdout, bytes) else b""
        err = done.stderr if isinstance(done.stderr, bytes) else b""
        return RunResult(done.exit_status if done.exit_status is not None else 255, out, err)

    async def start(self, command: str) -> Channel:
        import asyncssh

        conn = await self._connection()
        try:
            proc = await conn.create_process(command, encoding=None, stderr=asyncssh.DEVNULL)
        except (OSError, asyncssh.Error) as exc:
            raise TargetError(self.machine, f"connection lost: {exc}") from None
        return _SshChannel(self.machine, proc)

    async def stream(self, command: str) -> int:
        """Run `command` with this process's stdio attached (stdin only when it is not a
        terminal); its exit status. For `reconciler ssh MACHINE -- CMD`."""
        import asyncssh

        conn = await self._connection()
        loop = asyncio.get_running_loop()
        proc = await conn.create_process(command, encoding=None)

        async def copy(source: Any, sink: Any) -> None:
            while chunk := await source.read(65536):
                sink.write(chunk)
                sink.flush()

        async def feed() -> None:
            if not sys.stdin.isatty():
                while chunk := await loop.run_in_executor(None, os.read, sys.stdin.fileno(), 65536):
                    proc.stdin.write(chunk)
                    await proc.stdin.drain()
            proc.stdin.write_eof()

        try:
            await asyncio.gather(
                copy(proc.stdout, sys.stdout.buffer), copy(proc.stderr, sys.stderr.buffer), feed()
            )
            done = await proc.wait()
        except (OSError, asyncssh.Error) as exc:
            raise TargetError(self.machine, f"connection lost: {exc}") from None
        return done.exit_status if done.exit_status is not None else 255

    async def openssh_command(self, command: str) -> list[str] | None:
        """argv of the OpenSSH client running `command` on this machine: same user, same
        key (or agent and default keys, as asyncssh), trusting only the host key the
        connection verified or, before connecting, the one it would demand; through the
        warm master connection to the same endpoint and key when there is one (`warm`).
        None without an `ssh` client, before connecting to a machine of unknown key, or
        when the warm master could not connect."""
        client = shutil.which("ssh")
        key = self._conn.get_server_host_key() if self._conn is not None else None
        seen = key_text(key) if key is not None else self.endpoint.demanded_key(self.host_keys)
        if client is None or seen is None:
            return None
        via = await _masters.ready(self.endpoint, seen)
        if via is None and _masters.failed(self.endpoint, seen):
            return None  # as a session of its own would: the connection tries, and says why
        if self._known_hosts is None:
            self._known_hosts = _known_hosts_file(seen)
        argv = _openssh_argv(client, self.endpoint, seen, self._known_hosts, via or "none")
        return [*argv, "--", self.endpoint.host, command]

    async def close(self) -> None:
        if self._known_hosts is not None:
            shutil.rmtree(os.path.dirname(self._known_hosts), ignore_errors=True)
            self._known_hosts = None
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
            self._conn = None


def _known_hosts_file(key: str) -> str:
    """A private known_hosts file trusting `key` alone, under `_ALIAS`."""
    folder = tempfile.mkdtemp(prefix="reconciler-ssh-")  # 0700
    path = os.path.join(folder, "known_hosts")
    with open(path, "w") as f:
        f.write(f"{_ALIAS} {key}\n")
    return path


def _openssh_argv(
    client: str, e: SshEndpoint, key: str, known_hosts: str, control: str, master: bool = False
) -> list[str]:
    """The OpenSSH client's options for endpoint `e`, demanding host `key`; `control`: the
    master connection's socket, or "none"."""
    config = os.path.expanduser("~/.ssh/config")  # the one file asyncssh reads too
    argv = [
        client, "-F", config if os.access(config, os.R_OK) else os.devnull,
        "-T", "-x", "-a", "-p", str(e.port), "-l", e.user, "-c", ",".join(_CIPHERS),
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=15",
        "-o", f"ControlMaster={'yes' if master else 'no'}", "-o", f"ControlPath={control}",
        "-o", "LogLevel=ERROR", "-o", f"KexAlgorithms={','.join(_KEX)}",
        "-o", f"HostKeyAlgorithms={','.join(_key_algorithms(key))}",
        "-o", f"HostKeyAlias={_ALIAS}", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
        "-o", "UpdateHostKeys=no", "-o", "CheckHostIP=no",
    ]  # fmt: skip
    if e.identity_file:
        argv += ["-i", os.path.expanduser(e.identity_file)]
        argv += ["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"]
    return argv


def warm(endpoints: Iterable[tuple[SshEndpoint, str]]) -> None:
    """Start a master connection to each (endpoint, host key it must show) now; sessions
    to that endpoint demanding that key ride on it (`SshTarget.openssh_command`) until
    `stop_warm` (at the latest when this process exits)."""
    _masters.start(endpoints)


def stop_warm() -> None:
    _masters.stop()


class _Masters:
    """The warm OpenSSH master connections of this process. Each runs `cat` on its machine,
    reading a pipe only this process holds: however this process ends, the master's own
    session ends, and the master with it once the sessions riding on it are done."""

    WAIT = 20.0  # at most this long for a handshake; ConnectTimeout bounds the TCP part

    def __init__(self) -> None:
        self.running: dict[tuple[SshEndpoint, str], tuple[subprocess.Popen[bytes], str]] = {}

    def start(self, endpoints: Iterable[tuple[SshEndpoint, str]]) -> None:
        client = shutil.which("ssh")
        for e, key in endpoints:
            if client is None or (e, key) in self.running:
                continue
            if not self.running:
                atexit.register(self.stop)
            known_hosts = _known_hosts_file(key)
            socket = os.path.join(os.path.dirname(known_hosts), "master")
            argv = _openssh_argv(client, e, key, known_hosts, socket, master=True)
            null = subprocess.DEVNULL
            proc = subprocess.Popen(
                [*argv, "--", e.host, "exec cat > /dev/null"],
                stdin=subprocess.PIPE, stdout=null, stderr=null,
            )  # fmt: skip
            self.running[(e, key)] = (proc, socket)

    async def ready(self, e: SshEndpoint, key: str) -> str | None:
        """The socket of the master to `e` demanding `key` once it is connected; None
        without one, or when it failed (a connection of one's own then says why)."""
        if (e, key) not in self.running:
            return None
        proc, socket = self.running[(e, key)]
        deadline = time.monotonic() + self.WAIT
        while proc.poll() is None and time.monotonic() < deadline:
            if os.path.exists(socket):  # OpenSSH links it into place once listening
                return socket
            await asyncio.sleep(0.005)
        return None

    def failed(self, e: SshEndpoint, key: str) -> bool:
        """The master to `e` demanding `key` ended without being stopped: it could not
        connect (or was refused, or lost its connection)."""
        running = self.running.get((e, key))
        return running is not None and running[0].poll() is not None

    def stop(self) -> None:
        for proc, socket in self.running.values():
            with contextlib.suppress(OSError):
                proc.terminate()
            proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
            shutil.rmtree(os.path.dirname(socket), ignore_errors=True)
        self.running.clear()


_masters = _Masters()


class _SshChannel:
    def __init__(self, machine: str, proc: Any) -> None:
        self.machine, self.proc = machine, proc

    async def send(self, line: bytes) -> None:
        import asyncssh

        try:
            self.proc.stdin.write(line)
            await self.proc.stdin.drain()
        except (OSError, asyncssh.Error) as exc:
            raise TargetError(self.machine, f"connection lost: {exc}") from None

    async def receive(self) -> bytes:
        import asyncssh

        try:
            line: bytes = await self.proc.stdout.readline()
        except (OSError, asyncssh.Error, asyncio.IncompleteReadError):
            return b""
        return line

    async def stop(self) -> None:
        # closing the channel ends the remote agent: its stdin reaches EOF and its
        # writes fail; an operation it is in the middle of is abandoned with it
        import asyncssh

        self.proc.close()
        with contextlib.suppress(OSError, asyncssh.Error):
            await self.proc.wait_closed()
