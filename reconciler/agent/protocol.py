"""How the agent is spoken to:

    python3 agent.pyz COMMAND < request.json

One JSON request on stdin, exactly one JSON object on stdout. Exit status 0: success;
1: the operation failed (`{"error": …, "log": <instance log tail, when there is one>}`);
2: bad request (`{"error": "bad request: …"}`). Never a traceback.

    python3 agent.pyz serve

One process for a whole attempt: a JSON request per line ({"id", "command",
"request"}), each run in its own thread, its answer a line ({"id", "code", "answer"}) as
soon as it is done. Starting python3 for every operation cost more than most operations.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import TYPE_CHECKING, Any

from .request import BadRequest, Failure

if TYPE_CHECKING:
    from collections.abc import Callable

# command → (module, function): a command imports only what it needs (the archive's
# modules are compiled at every start: zipimport keeps no bytecode)
COMMANDS = {
    "activate": ("commands", "cmd_activate"),
    "deactivate": ("commands", "cmd_deactivate"),
    "status": ("commands", "cmd_status"),
    "lock": ("leases", "cmd_lock"),
    "unlock": ("leases", "cmd_unlock"),
    "snapshot": ("commands", "cmd_snapshot"),
    "restore": ("commands", "cmd_restore"),
    "switch-profile": ("profiles", "cmd_switch_profile"),
    "read-manifest": ("profiles", "cmd_read_manifest"),
    "gc": ("gc", "cmd_gc"),
    "list-store": ("store", "cmd_list_store"),
    "wrapper": ("commands", "cmd_wrapper"),
}


def command(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    module, function = COMMANDS[name]
    found: Callable[[dict[str, Any]], dict[str, Any]] = getattr(
        importlib.import_module(f".{module}", __package__), function
    )
    return found


def where(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return ""
    return f" (at line {tb.tb_lineno} in {tb.tb_frame.f_code.co_name})"


def run(args: list[str], stdin: bytes) -> tuple[int, dict[str, Any]]:
    """(exit status, answer) of the command `args` names, for the request in `stdin`."""
    if len(args) != 1 or args[0] not in COMMANDS:
        usage = "usage: agent.pyz {" + ",".join(COMMANDS) + "} < request.json"
        return 2, {"error": f"bad request: {usage}"}
    try:
        request = json.loads(stdin.decode("utf-8"))
    except ValueError as e:
        return 2, {"error": f"bad request: not a JSON document ({e})"}
    if not isinstance(request, dict):
        return 2, {"error": "bad request: the request must be a JSON object"}
    try:
        return 0, command(args[0])(request)
    except BadRequest as e:
        return 2, {"error": f"bad request: {e}"}
    except Failure as e:
        out: dict[str, Any] = dict(e.extra)
        out["error"] = e.message
        if e.log:
            out["log"] = e.log
        return 1, out
    except KeyboardInterrupt:
        return 1, {"error": "interrupted"}
    except Exception as e:
        return 1, {"error": f"{args[0]} failed: {type(e).__name__}: {e}{where(e)}"}


def write_line(value: dict[str, Any]) -> None:
    try:
        sys.stdout.write(json.dumps(value, sort_keys=True) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        pass


def serve() -> int:
    import threading  # here: a single command does without it

    for name in COMMANDS:  # all now: the archive may be gone by the time one is asked
        command(name)
    out = threading.Lock()
    workers = []

    def handle(line: bytes) -> None:
        try:
            msg = json.loads(line.decode("utf-8"))
            ident, command, request = msg["id"], msg["command"], msg["request"]
        except (ValueError, KeyError, TypeError) as e:
            ident, code, answer = None, 2, {"error": f"bad request: {e}"}
        else:
            code, answer = run([command], json.dumps(request).encode())
        with out:
            write_line({"id": ident, "code": code, "answer": answer})

    for line in sys.stdin.buffer:
        if line.strip():
            worker = threading.Thread(target=handle, args=(line,))
            worker.start()
            workers.append(worker)
    for worker in workers:
        worker.join()
    return 0


def main() -> int:
    if sys.argv[1:] == ["serve"]:
        return serve()
    try:
        stdin = sys.stdin.buffer.read()
    except (OSError, KeyboardInterrupt) as e:
        write_line({"error": f"bad request: cannot read stdin ({e})"})
        return 2
    code, out = run(sys.argv[1:], stdin)
    write_line(out)
    return code
