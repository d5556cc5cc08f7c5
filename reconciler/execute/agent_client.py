"""The agent (`reconciler/agent/`): shipped to every machine as one deterministic zip
archive, a store path of its own, run there with the machine's python3 and called over
`Target.run` with one JSON request in, one JSON answer out."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import shlex
import tempfile
import zipfile
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from reconciler.errors import UserError
from reconciler.store.build import install
from reconciler.store.content import hash_tree, make_immutable, remove_tree
from reconciler.store.local import LocalStore, PathInfo
from reconciler.targets.base import Channel, Target, TargetError
from reconciler.targets.store_paths import present, receive

SOURCE = Path(__file__).resolve().parent.parent / "agent"  # the package shipped
ARCHIVE = "agent.pyz"
# In the archive the package is `reconciler_agent` (its imports are relative), so that a
# `reconciler` installed beside the target's python3 can never stand in for it.
PACKAGE = "reconciler_agent"
MAIN = f"import sys\nfrom {PACKAGE}.protocol import main\nsys.exit(main())\n"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: no build's clock in it

# Loads the archive (sent first on stdin, `n` bytes) from memory, so that asking writes
# nothing on the machine (not even a temporary file: a full or read-only disk still
# answers, and nothing is left behind when the connection drops); then runs each
# command of the request list that follows it; prints {command: {"code", "answer"}}.
_STREAMED = r"""
import importlib.abc, importlib.util, io, json, sys, zipfile
n = int(sys.argv[1])
data = sys.stdin.buffer.read()
with zipfile.ZipFile(io.BytesIO(data[:n])) as archive:
    files = {name: archive.read(name) for name in archive.namelist()}

class Archive(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        base = name.replace(".", "/")
        for origin, package in ((base + "/__init__.py", True), (base + ".py", False)):
            if origin in files:
                return importlib.util.spec_from_loader(
                    name, self, origin=origin, is_package=package
                )
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        origin = module.__spec__.origin
        exec(compile(files[origin], origin, "exec"), module.__dict__)

sys.meta_path.insert(0, Archive())
from AGENT_PACKAGE.protocol import run
answers = {}
for command, request in json.loads(data[n:].decode("utf-8")):
    code, answer = run([command], json.dumps(request).encode())
    answers[command] = {"code": code, "answer": answer}
sys.stdout.write(json.dumps(answers))
""".replace("AGENT_PACKAGE", PACKAGE)


def archive(source: Path = SOURCE) -> bytes:
    """The agent package as one zip archive whose bytes depend only on the sources'
    names and contents: entries sorted, fixed times and permissions, stored uncompressed
    (deflate's output may differ between zlib versions, and with it the store hash)."""
    entries = {"__main__.py": MAIN.encode()}
    for path in source.glob("*.py"):
        if path.name != "__main__.py":  # the archive's own `__main__.py` stands for it
            entries[f"{PACKAGE}/{path.name}"] = path.read_bytes()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.create_system = 3  # unix, whichever system built it
            info.external_attr = 0o644 << 16
            zf.writestr(info, entries[name])
    return out.getvalue()


def ensure_agent(store: LocalStore) -> PathInfo:
    """The agent as a store path in the local store (made once per agent version)."""
    data = archive()
    name = f"{hashlib.sha256(data).hexdigest()[:32]}-reconciler-agent"
    found = store.info(name)
    if found:
        return found
    work = Path(tempfile.mkdtemp(prefix="agent-", dir=store.scratch()))
    try:
        out = work / "out"
        out.mkdir()
        (out / ARCHIVE).write_bytes(data)
        content = hash_tree(out)
        make_immutable(out)
        return install(store, out, PathInfo(name, content.hash, content.size, content.files))
    finally:
        remove_tree(work)


def agent_command(target: Target, agent: str, command: str) -> str:
    script = shlex.quote(f"{target.store_dir}/{agent}/{ARCHIVE}")
    return f"{target.python} {script} {command}"


class AgentError(UserError):
    """An operation on a machine failed; `log` holds the tail of the instance's log."""

    def __init__(self, machine: str, message: str, log: str = "") -> None:
        super().__init__(f"{machine}: {message}")
        self.machine, self.message, self.log = machine, message, log


async def ship(targets: Iterable[Target], store: LocalStore, agent: PathInfo) -> None:
    """Put this reconciler's agent on machines that lack it (to undo or take down with)."""
    for target in targets:
        if not await present(target, {agent.path: agent.content_hash}):
            await receive(target, store, [agent.path], "none")


async def lease(target: Target, store: LocalStore, agent: PathInfo, owner: str, ttl: float) -> None:
    """Ship the agent if needed and take the machine's lock for `owner` (gc, self-heal:
    work outside a transition that must not run beside one)."""
    await ship([target], store, agent)
    await call(
        target, agent.path, "lock", {"stateDir": target.state_dir, "owner": owner, "ttl": ttl}
    )


async def release(target: Target, agent: str, owner: str) -> str | None:
    """Give the lock back; why not, if it could not be."""
    try:
        await call(target, agent, "unlock", {"stateDir": target.state_dir, "owner": owner})
    except (AgentError, TargetError) as e:
        return f"{target.machine}: could not unlock: {e}"
    return None


async def ask(target: Target, requests: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Ask without writing anything on the machine: the agent is streamed over stdin and
    runs each (command, request) in one process; {command: {"code", "answer"}}."""
    data = archive()
    result = await target.run(
        f"{target.python} -c {shlex.quote(_STREAMED)} {len(data)}",
        data + json.dumps(requests).encode(),
    )
    try:
        answers = json.loads(result.stdout) if result.exit_status == 0 else None
    except ValueError:
        answers = None
    if not isinstance(answers, dict):
        err = result.stderr.decode(errors="replace").strip().splitlines()
        raise TargetError(
            target.machine,
            f"the agent did not answer (exit status {result.exit_status})"
            + (f": {err[-1]}" if err else ""),
        )
    return answers


def answer_of(answers: dict[str, Any], command: str) -> Any:
    """The agent's answer to `command` when it succeeded, else None."""
    got = answers.get(command)
    return got.get("answer") if isinstance(got, dict) and got.get("code") == 0 else None


Ask = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]  # (command, request) → answer


async def fetch_snapshot(
    ask: Ask, target: Target, deployment: str, service: str, instance: Any | None
) -> tuple[str, bytes]:
    """Have the agent on `target` (asked through `ask`: a session's, or calls of its own)
    snapshot `service`'s state, naming its recorded activation `instance` when it has one
    (a wrapper snapshots itself), and read the snapshot back: its path there, its bytes."""
    request = {"stateDir": target.state_dir, "deployment": deployment, "service": service}
    if instance:
        request["instance"] = instance
    there = str((await ask("snapshot", request))["path"])
    data = await target.read_file(there)
    if data is None:
        raise AgentError(target.machine, f"the snapshot of {service} vanished")
    return there, data


async def call(target: Target, agent: str, command: str, request: dict[str, Any]) -> dict[str, Any]:
    result = await target.run(agent_command(target, agent, command), json.dumps(request).encode())
    try:
        answer: dict[str, Any] = json.loads(result.stdout or b"{}")
    except ValueError:
        answer = {}
    if result.exit_status == 0:
        return answer
    message = answer.get("error") or result.stderr.decode(errors="replace").strip()
    raise AgentError(target.machine, f"{command} failed: {message}", answer.get("log", ""))


class AgentSession:
    """One agent process on a machine for a whole transition (`agent.pyz serve`): requests
    go down one channel as lines and run concurrently there; each answer comes back
    with its id. Restarted on the next call if it ends."""

    def __init__(self, target: Target, agent: str) -> None:
        self.target, self.agent = target, agent
        self.channel: Channel | None = None
        self.reader: asyncio.Task[None] | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.starting = asyncio.Lock()
        self.next_id = 0

    async def open(self) -> Channel:
        async with self.starting:
            if self.channel is None:
                # exec: stopping the channel must reach the agent itself, not a shell
                serve = "exec " + agent_command(self.target, self.agent, "serve")
                self.channel = await self.target.start(serve)
                self.reader = asyncio.create_task(self._read(self.channel))
            return self.channel

    async def call(self, command: str, request: dict[str, Any]) -> dict[str, Any]:
        channel = await self.open()
        self.next_id += 1
        ident = self.next_id
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[ident] = answer
        line = {"id": ident, "command": command, "request": request}
        try:
            await channel.send(json.dumps(line).encode() + b"\n")
            msg = await answer
        finally:
            self.pending.pop(ident, None)
        got = msg.get("answer")
        body: dict[str, Any] = got if isinstance(got, dict) else {}
        if msg.get("code") == 0:
            return body
        error = body.get("error") or f"no answer (code {msg.get('code')})"
        raise AgentError(self.target.machine, f"{command} failed: {error}", body.get("log", ""))

    async def _read(self, channel: Channel) -> None:
        while line := await channel.receive():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            ident = msg.get("id") if isinstance(msg, dict) else None
            waiting = self.pending.get(ident) if isinstance(ident, int) else None
            if waiting is not None and not waiting.done():
                waiting.set_result(msg)
        if self.channel is channel:
            self.channel = None
        for waiting in self.pending.values():
            if not waiting.done():
                waiting.set_exception(
                    AgentError(self.target.machine, "the agent ended before it answered")
                )

    async def close(self) -> None:
        """End the agent; an operation still running there is abandoned with it."""
        channel, self.channel = self.channel, None
        if channel is not None:
            await channel.stop()
        if self.reader is not None:
            self.reader.cancel()  # a process the agent left behind may keep its stdout open
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
