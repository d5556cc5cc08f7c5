"""`reconciler status`: the last applied generation and the last attempt from the state
DB, and what the machines say now — reachable or not, their generation, each instance
active, dead, missing or drifted, and healthy — with the conditions that follow.

Observing is read-only everywhere: the state DB is opened for reading (never migrated,
never written, not even a first-seen host key), and the machines run this reconciler's
activation agent streamed over stdin, so nothing is written to their store either.
`check` observes the same way (`observe` below).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils

from reconciler.commands.context import check_format
from reconciler.commands.options import Options
from reconciler.state.history import (
    AttemptRow,
    DeploymentRecord,
    InstanceRow,
    MachineRow,
    change_summary,
    pick_recorded,
    read_deployment,
    reading,
)
from reconciler.state.hostkeys import RecordedHostKeys

if TYPE_CHECKING:
    from reconciler.targets.base import Target

FORMAT_VERSION = 1
CONNECT_TIMEOUT = 5.0  # seconds to reach an SSH machine before it counts as unreachable
OBSERVE_TIMEOUT = 90.0  # seconds for one machine's answer (health probes take their time)

# --- observing the machines -----------------------------------------------------------


@dataclass
class MachineSeen:
    name: str
    reachable: bool = False
    error: str | None = None  # why it could not be reached or asked
    manifest: dict[str, Any] | None = None  # its manifest.json ({} when it has none)
    instances: dict[str, dict[str, Any]] | None = None  # key → the agent's status answer
    present: set[str] | None = None  # recorded store paths it has (when asked)

    @property
    def generation(self) -> int | None:
        g = (self.manifest or {}).get("generation")
        return g if isinstance(g, int) and not isinstance(g, bool) else None


@dataclass
class InstanceSeen:
    row: InstanceRow
    state: str  # active | dead | missing | drifted | unknown (machine not observed)
    healthy: bool | None = None
    pid: int | None = None
    identity: str | None = None  # the identity the machine reports

    def to_json(self) -> dict[str, Any]:
        r = self.row
        return {
            "key": r.key,
            "service": r.service,
            "machine": r.machine,
            "type": r.type,
            "port": r.port,
            "state": self.state,
            "healthy": self.healthy,
            "pid": self.pid,
            "identity": r.identity,
            "observedIdentity": self.identity,
        }


@dataclass
class Observation:
    record: DeploymentRecord
    machines: dict[str, MachineSeen] = field(default_factory=dict)
    instances: list[InstanceSeen] = field(default_factory=list)


class RecordedKeysOnly(RecordedHostKeys):
    """Host keys as recorded in the state DB. A machine never connected to before is
    trusted on first use like `apply` does, but its key is not recorded: observing never
    writes the state DB."""

    def record(self, host: str, port: int, key: str) -> None:
        return None


def observe(
    db: sqlite_utils.Database, record: DeploymentRecord, state_root: Path, paths: bool = False
) -> Observation:
    """`observe_async` for a caller without an event loop."""
    return asyncio.run(observe_async(db, record, state_root, paths))


async def observe_async(
    db: sqlite_utils.Database, record: DeploymentRecord, state_root: Path, paths: bool = False
) -> Observation:
    """Ask every recorded machine, in parallel, for its manifest and its instances (and,
    with `paths`, which recorded store paths it has). Never raises for a machine: one
    that cannot be reached or asked is a MachineSeen with its error."""
    keys = RecordedKeysOnly(db)
    found = await asyncio.gather(
        *(_observe_machine(m, record, state_root, keys, paths) for m in record.machines)
    )
    seen = {m.name: m for m in found}
    obs = Observation(record, seen)
    for inst in record.instances:
        obs.instances.append(_classify(inst, seen.get(inst.machine)))
    return obs


async def _observe_machine(
    m: MachineRow,
    record: DeploymentRecord,
    state_root: Path,
    keys: RecordedKeysOnly,
    paths: bool,
) -> MachineSeen:
    from reconciler.execute.agent import answer_of
    from reconciler.targets.local import LocalTarget
    from reconciler.targets.open import open_target
    from reconciler.targets.ssh import SshTarget
    from reconciler.targets.store import present

    seen = MachineSeen(m.name)
    connection = m.connection or {"targetEnv": m.target_env, "stateDir": m.state_dir}
    try:
        target = open_target(m.name, connection, state_root, keys)
    except Exception as e:
        seen.error = _message(m.name, e)
        return seen
    try:
        if isinstance(target, LocalTarget) and not os.path.isdir(target.state_dir):
            seen.error = f"its folder {target.state_dir} does not exist"
            return seen
        if isinstance(target, SshTarget):
            try:
                await asyncio.wait_for(target.connect(), CONNECT_TIMEOUT)
            except TimeoutError:
                at = target.endpoint
                seen.error = (
                    f"cannot connect to {at.user}@{at.host}:{at.port}: no answer within "
                    f"{CONNECT_TIMEOUT:g} s"
                )
                return seen
        seen.reachable = True  # from here on, what fails is asking it, not reaching it
        mine = [i for i in record.instances if i.machine == m.name]
        answers = await asyncio.wait_for(
            _ask_agent(target, record.name, mine, m.address), OBSERVE_TIMEOUT
        )
        manifest = answer_of(answers, "read-manifest")
        if isinstance(manifest, dict):
            seen.manifest = manifest
        status = answer_of(answers, "status")
        if isinstance(status, dict) and isinstance(status.get("instances"), dict):
            seen.instances = status["instances"]
        problems = [
            f"{command} failed: {_agent_error(answers.get(command))}"
            for command, got in (("read-manifest", seen.manifest), ("status", seen.instances))
            if got is None
        ]
        seen.error = "; ".join(problems) or None
        expected = record.paths.get(m.name, {})
        if paths and expected:
            seen.present = await asyncio.wait_for(present(target, expected), OBSERVE_TIMEOUT)
    except TimeoutError:
        seen.error = f"no answer within {OBSERVE_TIMEOUT:g} s"
    except Exception as e:  # whatever happened there, it is this machine's row
        seen.error = _message(m.name, e)
    finally:
        with contextlib.suppress(Exception):  # closing what never opened properly
            await asyncio.wait_for(target.close(), CONNECT_TIMEOUT)
    return seen


async def _ask_agent(
    target: Target,
    deployment: str,
    instances: list[InstanceRow],
    address: str | None,
) -> dict[str, Any]:
    """One round trip: read-manifest and status, from the agent streamed to the machine."""
    from reconciler.execute.agent import ask

    base = {"stateDir": target.state_dir, "deployment": deployment}
    status = {
        **base,
        "instances": [_status_item(i, target.state_dir, address) for i in instances],
    }
    return await ask(target, [("read-manifest", base), ("status", status)])


def _status_item(inst: InstanceRow, state_dir: str, address: str | None) -> dict[str, Any]:
    """What the agent's `status` needs of an instance, from its recorded request."""
    recorded = (inst.request or {}).get("instance")
    raw: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    package = raw.get("package")
    return {
        "key": inst.key,
        "service": inst.service,
        "type": inst.type,
        "identity": inst.identity,
        "package": package
        if isinstance(package, str) and package
        else f"{state_dir}/store/{inst.package_path}",
        "health": raw.get("health"),
        "host": raw.get("host") or address,
        "port": inst.port,
    }


def _classify(inst: InstanceRow, machine: MachineSeen | None) -> InstanceSeen:
    answer = (machine.instances or {}).get(inst.key) if machine else None
    if not isinstance(answer, dict):
        return InstanceSeen(inst, "unknown")
    state = answer.get("state")
    identity = answer.get("identity")
    identity = identity if isinstance(identity, str) else None
    pid = answer.get("pid")
    healthy = answer.get("healthy")
    seen = InstanceSeen(
        inst,
        state if state in ("active", "dead", "missing") else "unknown",
        healthy if isinstance(healthy, bool) else None,
        pid if isinstance(pid, int) else None,
        identity,
    )
    if seen.state in ("active", "dead") and identity and identity != inst.identity:
        seen.state = "drifted"
    return seen


def _agent_error(answer: Any) -> str:
    if not isinstance(answer, dict):
        return "no answer"
    body = answer.get("answer")
    error = body.get("error") if isinstance(body, dict) else None
    return str(error or f"no answer (exit status {answer.get('code')})")


def _message(machine: str, e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text.removeprefix(f"{machine}: ")


# --- conditions -----------------------------------------------------------------------


def conditions(obs: Observation | None, record: DeploymentRecord | None) -> list[dict[str, Any]]:
    """Ready, Reconciling and Stalled as they follow from the record and what was seen
    (the controller adds transition times to these; later)."""
    last = record.last_attempt if record else None
    generation = record.generation if record else None
    stalled = last is not None and last.status == "stalled"
    running = last is not None and last.status == "running"
    ready, reason, message = _ready(obs, last, generation)
    return [
        _condition("Ready", ready, reason, message),
        _condition(
            "Reconciling",
            running,
            "AttemptInFlight" if running else "Idle",
            f"attempt {last.id} started {last.started_at}" if running and last else "",
        ),
        _condition(
            "Stalled",
            stalled,
            "RollbackFailed" if stalled else "NotStalled",
            _first_line(last.reason) if stalled and last else "",
        ),
    ]


def _ready(
    obs: Observation | None, last: AttemptRow | None, generation: AttemptRow | None
) -> tuple[bool, str, str]:
    if generation is None or last is None:
        return False, "NeverApplied", "no generation has been applied"
    if last.status != "succeeded":
        reasons = {
            "stalled": "Stalled",
            "running": "AttemptInFlight",
        }
        what = f"the last attempt ({_short(last.commit) or 'no commit'}) {last.status}"
        detail = f": {_first_line(last.reason)}" if last.reason else ""
        return False, reasons.get(last.status, "AttemptFailed"), what + detail
    if obs is None:
        return False, "NotObserved", "the machines were not observed"
    unreachable = sorted(n for n, m in obs.machines.items() if not m.reachable)
    if unreachable:
        return False, "MachinesUnreachable", f"unreachable: {', '.join(unreachable)}"
    down = [f"{i.row.key} {i.state}" for i in obs.instances if i.state != "active"]
    if down:
        return False, "InstancesNotActive", ", ".join(down)
    sick = [i.row.key for i in obs.instances if i.healthy is False]
    if sick:
        return False, "InstancesUnhealthy", f"failing health checks: {', '.join(sick)}"
    n = len(obs.instances)
    return True, "AllActive", f"generation {generation.generation}: {n} instances active"


def with_controller(
    computed: list[dict[str, Any]], stored: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The controller's own view overlaid: a Stalled it set (bad models, a refused
    commit, a failing apply it backs off from) counts, and transition times it kept."""
    by_type = {c.get("type"): c for c in stored}
    out = []
    for c in computed:
        kept = by_type.get(c["type"])
        if kept and c["type"] == "Stalled" and kept.get("status") == "True":
            c = {**c, **{k: kept[k] for k in ("status", "reason", "message") if k in kept}}
        if kept and kept.get("status") == c["status"]:
            c = {**c, "lastTransitionTime": kept.get("lastTransitionTime")}
        out.append(c)
    return out


def _condition(kind: str, status: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
    }


# --- the command ----------------------------------------------------------------------


def load_record(
    opts: Options,
) -> tuple[sqlite_utils.Database | None, str | None, DeploymentRecord | None]:
    """The state DB (read-only), the deployment's name and its record, for status and check."""
    from reconciler.state.db import open_db

    check_format(opts, ("text", "json"))
    db = open_db(opts.state_path, write=False)
    with reading(opts.state_path):
        name = pick_recorded(db, opts.deployment)
        record = read_deployment(db, name) if db is not None and name else None
    return db, name, record


def run(opts: Options) -> int:
    db, name, record = load_record(opts)
    if record is None or db is None:
        return _nothing(opts, name)
    obs = observe(db, record, opts.state_path.parent)
    data = status_json(obs)
    if opts.format == "json":
        print(json.dumps(data, indent=2))
    else:
        _print_status(data, obs)
    return 0


def status_json(obs: Observation) -> dict[str, Any]:
    record = obs.record
    gen, last = record.generation, record.last_attempt
    return {
        "formatVersion": FORMAT_VERSION,
        "deployment": record.name,
        "recorded": True,
        "generation": None
        if gen is None
        else {
            "number": gen.generation,
            "commit": gen.commit,
            "author": gen.author,
            "subject": gen.subject,
            "commitTime": gen.commit_time,
            "appliedAt": gen.time,
        },
        "lastAttempt": None
        if last is None
        else {
            "id": last.id,
            "status": last.status,
            "reason": last.reason,
            "generation": last.generation,
            "commit": last.commit,
            "subject": last.subject,
            "startedAt": last.started_at,
            "finishedAt": last.finished_at,
            "changes": change_summary(last.summary),
        },
        "lastAppliedRevision": record.last_applied_sha,
        "lastAttemptedRevision": record.last_attempted_sha,
        "conditions": with_controller(conditions(obs, record), record.conditions),
        "machines": [
            {
                "name": m.name,
                "targetEnv": m.target_env,
                "address": m.address,
                "reachable": obs.machines[m.name].reachable,
                "error": obs.machines[m.name].error,
                "generation": obs.machines[m.name].generation,
                "commit": (obs.machines[m.name].manifest or {}).get("commit"),
                "providerId": m.provider_id,
                "providerState": m.provider_state,
            }
            for m in record.machines
        ],
        "instances": [i.to_json() for i in obs.instances],
    }


def _nothing(opts: Options, name: str | None) -> int:
    if opts.format == "json":
        print(json.dumps(nothing_json(name), indent=2))
    else:
        print(nothing_recorded(opts, name))
    return 0


def nothing_json(name: str | None) -> dict[str, Any]:
    return {
        "formatVersion": FORMAT_VERSION,
        "deployment": name,
        "recorded": False,
        "generation": None,
        "lastAttempt": None,
        "lastAppliedRevision": None,
        "lastAttemptedRevision": None,
        "conditions": conditions(None, None),
        "machines": [],
        "instances": [],
    }


def nothing_recorded(opts: Options, name: str | None) -> str:
    if name:
        return f"Nothing of {name} is recorded in {opts.state_path}."
    return f"Nothing is recorded in {opts.state_path}."


def _print_status(data: dict[str, Any], obs: Observation) -> None:
    gen, last = data["generation"], data["lastAttempt"]
    if gen is None:
        print(f"Deployment {data['deployment']}: no generation applied yet")
    else:
        print(
            f"Deployment {data['deployment']}: generation {gen['number']}, "
            f"{_commit_text(gen['commit'], gen['subject'])}, applied {when(gen['appliedAt'])}"
        )
    if last is not None:
        print(
            f"Last attempt: {last['status']}, {_commit_text(last['commit'], last['subject'])}, "
            f"{when(last['finishedAt'] or last['startedAt'])}"
        )
        if last["reason"] and last["status"] != "succeeded":
            for line in last["reason"].splitlines():
                print(f"  {line}")
    for c in data["conditions"]:
        message = f" ({c['reason']}: {c['message']})" if c["message"] else f" ({c['reason']})"
        print(f"{c['type']}: {c['status']}{message}")
    if data["machines"]:
        print()
        print_table(
            ["MACHINE", "ENV", "PROVIDER", "ADDRESS", "GENERATION", "REACHABLE"],
            [
                [
                    m["name"],
                    m["targetEnv"],
                    f"{m['providerId']} ({m['providerState']})" if m["providerId"] else "-",
                    m["address"] or "-",
                    _dash(m["generation"]),
                    "yes" + (f" ({m['error']})" if m["error"] else "")
                    if m["reachable"]
                    else f"no: {m['error']}",
                ]
                for m in data["machines"]
            ],
        )
    if data["instances"]:
        print()
        print_table(
            ["INSTANCE", "TYPE", "PORT", "STATE", "HEALTHY"],
            [
                [i["key"], i["type"], _dash(i["port"]), i["state"], _yes_no(i["healthy"])]
                for i in data["instances"]
            ],
        )


# --- text helpers (history and check use them too) ------------------------------------


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on a terminal; plain aligned columns otherwise (pipes, files, CI)."""
    if sys.stdout.isatty():
        from rich import box
        from rich.console import Console
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for h in headers:
            table.add_column(h, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console(highlight=False).print(table)
        return
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())


def when(stamp: str | None) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM:SS UTC'; '-' when unknown."""
    if not stamp:
        return "-"
    try:
        t = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _short(sha: str | None) -> str:
    return sha[:12] if sha else ""


def short_sha(sha: str | None) -> str:
    return _short(sha) or "-"


def _commit_text(sha: str | None, subject: str | None) -> str:
    if not sha:
        return "no commit"
    return f"commit {sha[:12]}" + (f' "{subject}"' if subject else "")


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0]


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"
