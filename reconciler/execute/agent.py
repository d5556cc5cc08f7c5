"""The activation agent: shipped to every machine as a store path of its own, and
called over `Target.run` with one JSON request in, one JSON answer out."""

from __future__ import annotations

import hashlib
import json
import shlex
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reconciler.store.build import install
from reconciler.store.content import hash_tree, make_immutable, remove_tree
from reconciler.store.local import LocalStore, PathInfo
from reconciler.targets.base import Target, TargetError
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


class AgentError(Exception):
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


async def ask(target: Target, requests: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Ask without writing anything on the machine: the agent is streamed over stdin and
    runs each (command, request) in one process; {command: {"code", "answer"}}."""
    source = SOURCE.read_bytes()
    result = await target.run(
        f"python3 -c {shlex.quote(_STREAMED)} {len(source)}",
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
    result = await target.run(f"python3 {script} {command}", json.dumps(request).encode())
    try:
        answer: dict[str, Any] = json.loads(result.stdout or b"{}")
    except ValueError:
        answer = {}
    if result.exit_status == 0:
        return answer
    message = answer.get("error") or result.stderr.decode(errors="replace").strip()
    raise AgentError(target.machine, f"{command} failed: {message}", answer.get("log", ""))
