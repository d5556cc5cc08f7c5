"""The activation agent: shipped to every machine as a store path of its own, and
called over `Target.run` with one JSON request in, one JSON answer out."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shlex
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reconciler.errors import UserError
from reconciler.store.build import install
from reconciler.store.content import hash_tree, make_immutable, remove_tree
from reconciler.store.local import LocalStore, PathInfo
from reconciler.targets.base import Channel, Target, TargetError
from reconciler.targets.store import present, receive

SOURCE = Path(__file__).resolve().parent.parent / "activation" / "agent.py"

# Runs the agent (sent first on stdin, `n` bytes) in this one process for each command
# of the request list that follows it; prints {command: {"code", "answer"}}.
_STREAMED = r"""
import json, sys
n = int(sys.argv[1])
data = sys.stdin.buffer.read()
agent = {"__name__": "reconciler_agent", "__file__": "agent.py"}
exec(compile(data[:n], "agent.py", "exec"), agent)
answers = {}
for command, request in json.loads(data[n:].decode("utf-8")):
    code, answer = agent["run"]([command], json.dumps(request).encode())
    answers[command] = {"code": code, "answer": answer}
sys.stdout.write(json.dumps(answers))
"""


class AgentError(UserError):
    """An operation on a machine failed; `log` holds the tail of the instance's log."""

    def __init__(self, machine: str, message: str, log: str = "") -> None:
        super().__init__(f"{machine}: {message}")
        self.machine, self.message, self.log = machine, message, log


def agent_path_name() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:32]
    return f"{digest}-reconciler-agent"


def ensure_agent(store: LocalStore) -> PathInfo:
    """The agent as a store path in the local store (made once per agent version)."""
    name = agent_path_name()
    found = store.info(name)
    if found:
        return found
    work = Path(tempfile.mkdtemp(prefix="agent-", dir=store.scratch()))
    try:
        out = work / "out"
        out.mkdir()
        (out / "agent.py").write_bytes(SOURCE.read_bytes())
        content = hash_tree(out)
        make_immutable(out)
        return install(store, out, PathInfo(name, content.hash, content.size, content.files))
    finally:
        remove_tree(work)


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
    source = SOURCE.read_bytes()
    result = await target.run(
        f"{target.python} -c {shlex.quote(_STREAMED)} {len(source)}",
        source + json.dumps(requests).encode(),
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


async def call(target: Target, agent: str, command: str, request: dict[str, Any]) -> dict[str, Any]:
    script = shlex.quote(f"{target.store_dir}/{agent}/agent.py")
    result = await target.run(f"{target.python} {script} {command}", json.dumps(request).encode())
    try:
        answer: dict[str, Any] = json.loads(result.stdout or b"{}")
    except ValueError:
        answer = {}
    if result.exit_status == 0:
        return answer
    message = answer.get("error") or result.stderr.decode(errors="replace").strip()
    raise AgentError(target.machine, f"{command} failed: {message}", answer.get("log", ""))


class AgentSession:
    """One agent process on a machine for a whole transition (`agent.py serve`): requests
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
                script = shlex.quote(f"{self.target.store_dir}/{self.agent}/agent.py")
                # exec: stopping the channel must reach the agent itself, not a shell
                serve = f"exec {self.target.python} {script} serve"
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
