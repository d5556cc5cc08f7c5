"""Applies as forks of a warm process: the controller keeps one `zygote` child that has
imported everything an apply needs, and each apply is a fork of it running the
`reconciler apply` command line. A crash in an apply still ends only that fork, but an
apply no longer pays Python's start and the imports (≈0.45 s of CPU each, measured), only
a fork (≈10 ms).

The controller talks to the zygote over a Unix socket of packets: a request is one JSON
message (argv, environment) with the apply's stdout and stderr passed as file
descriptors; the zygote answers with the fork's pid at once and its exit status when it
ends. The zygote is single-threaded (forking from a threaded process is unsafe): one
select loop over the socket and a SIGCHLD wake-up pipe. When it is gone, the next apply
starts a new one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import sys
from typing import Any

# what the zygote imports before its first fork: the apply command and what it loads
WARM = ("reconciler.cli", "reconciler.commands.apply", "reconciler.execute.inputs")
MAX_MESSAGE = 1 << 20


def serve(fd: int) -> None:
    """The zygote's loop (in the child process): fork an apply per request."""
    import importlib

    for module in WARM:
        importlib.import_module(module)
    sock = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the controller signals each apply itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    forks: dict[int, int] = {}  # pid → request id
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 512)
        if sock.fileno() in ready:
            message, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 2)
            if not message:  # the controller is gone: its applies carry on, we end
                return
            request = json.loads(message)
            pid = os.fork()
            if pid == 0:
                sock.close()
                _apply_in_fork(request, fds)
            for passed in fds:
                os.close(passed)
            forks[pid] = request["id"]
            _send(sock, {"id": request["id"], "pid": pid})
        while forks:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            _send(sock, {"id": forks.pop(pid), "exit": os.waitstatus_to_exitcode(status)})


def _apply_in_fork(request: dict[str, Any], fds: list[int]) -> None:
    """In the fork: become the `reconciler apply` process the request describes. Its
    SystemExit ends the process as the command's own would (atexit handlers included)."""
    os.setsid()  # a terminal's ^C reaches it only through the controller
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for passed in fds:
        os.close(passed)
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["reconciler", *request["argv"]]
    from reconciler.cli import main

    main(request["argv"])
    sys.exit(0)


def _send(sock: socket.socket, value: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        sock.send(json.dumps(value).encode())


class Fork:
    """An apply forked by the zygote, with what the controller uses of a Process."""

    def __init__(self, pid: int, exited: asyncio.Future[int], out: int, err: int) -> None:
        self.pid, self.exited, self.out, self.err = pid, exited, out, err
        self.returncode: int | None = None

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def communicate(self) -> tuple[bytes, bytes]:
        out, err = await asyncio.gather(_read_all(self.out), _read_all(self.err))
        self.returncode = await self.exited
        return out, err


async def _read_all(fd: int) -> bytes:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        return await reader.read()
    finally:
        transport.close()


class Zygote:
    """The controller's side: started on the first apply, started again if it ends."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.sock: socket.socket | None = None
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.exits: dict[int, asyncio.Future[int]] = {}
        self.reader: asyncio.Task[None] | None = None
        self.starting = asyncio.Lock()
        self.next_id = 0

    async def _ensure(self) -> socket.socket:
        async with self.starting:
            if self.sock is None or self.proc is None or self.proc.returncode is not None:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                code = f"from reconciler.controller.zygote import serve; serve({theirs.fileno()})"
                self.proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    code,
                    pass_fds=[theirs.fileno()],
                    stdin=asyncio.subprocess.DEVNULL,
                    start_new_session=True,
                )
                theirs.close()
                ours.setblocking(False)
                self.sock = ours
                self.reader = asyncio.create_task(self._read(ours))
            return self.sock

    async def fork(self, argv: list[str], env: dict[str, str]) -> Fork:
        sock = await self._ensure()
        loop = asyncio.get_running_loop()
        self.next_id += 1
        ident = self.next_id
        started = self.waiting[ident] = loop.create_future()
        exited = self.exits[ident] = loop.create_future()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            request = json.dumps({"id": ident, "argv": argv, "env": env}).encode()
            socket.send_fds(sock, [request], [out_w, err_w])
        except OSError:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        try:
            answer = await started
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        return Fork(int(answer["pid"]), exited, out_r, err_r)

    async def _read(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while message := await loop.sock_recv(sock, MAX_MESSAGE):
                self._dispatch(json.loads(message))
        finally:
            if self.sock is sock:
                self.sock = None
            sock.close()
            gone = OSError("the apply zygote ended")
            pending: list[asyncio.Future[Any]] = [*self.waiting.values(), *self.exits.values()]
            for future in pending:
                if not future.done():
                    future.set_exception(gone)
            self.waiting.clear()
            self.exits.clear()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        ident = msg["id"]
        if "pid" in msg and (started := self.waiting.pop(ident, None)) and not started.done():
            started.set_result(msg)
        if "exit" in msg and (exited := self.exits.pop(ident, None)) and not exited.done():
            exited.set_result(int(msg["exit"]))

    async def close(self) -> None:
        """The zygote ends when its socket closes; the applies it forked carry on."""
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            await self.proc.wait()
