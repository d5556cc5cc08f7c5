"""Observing a deployment's machines: what `status`, `check`, self-heal, the API and the
page share. Each recorded machine is asked, in parallel, for its manifest and the state
of its instances.

Observing is read-only everywhere: the state DB is only read (never migrated, never
written, not even a first-seen host key), and the machines run this reconciler's agent
streamed over stdin, so nothing is written to their store either. A local machine is
this host: its agent's read-only commands run in this process (the same code, no
python3 started per deployment). Deployments sharing a machine are asked together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.execute.conditions import conditions, with_stored
from reconciler.state.db import StateDB
from reconciler.state.hostkeys import RecordedHostKeys
from reconciler.state.rows import DeploymentRecord, InstanceRow, MachineRow, change_summary

if TYPE_CHECKING:
    from reconciler.targets.base import Target

FORMAT_VERSION = 1
CONNECT_TIMEOUT = 5.0  # seconds to reach an SSH machine before it counts as unreachable
LOG_TAIL_BYTES = 64 * 1024  # of an instance's log, for the page
OBSERVE_TIMEOUT = 90.0  # seconds for one machine's answer (health probes take their time)


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
    db: StateDB, record: DeploymentRecord, state_root: Path, paths: bool = False
) -> Observation:
    """`observe_async` for a caller without an event loop."""
    return asyncio.run(observe_async(db, record, state_root, paths))


async def observe_async(
    db: StateDB, record: DeploymentRecord, state_root: Path, paths: bool = False
) -> Observation:
    """Ask every recorded machine, in parallel, for its manifest and its instances (and,
    with `paths`, which recorded store paths it has). Never raises for a machine: one
    that cannot be reached or asked is a MachineSeen with its error."""
    return (await observe_many(db, [record], state_root, paths))[record.name]


async def observe_many(
    db: StateDB,
    records: list[DeploymentRecord],
    state_root: Path,
    paths: bool = False,
    limit: asyncio.Semaphore | None = None,
) -> dict[str, Observation]:
    """`observe_async` of many deployments, each machine asked once for all of those it
    carries (a machine shared by a thousand deployments is one round trip, not a
    thousand), machines in parallel but no more than `limit` at once."""
    from reconciler.targets.open import open_target

    keys = RecordedKeysOnly(db)
    seen: dict[str, dict[str, MachineSeen]] = {r.name: {} for r in records}
    groups: dict[tuple[str, str, str], tuple[Target, list[tuple[DeploymentRecord, MachineRow]]]]
    groups = {}
    for record in records:
        for m in record.machines:
            connection = m.connection or {"targetEnv": m.target_env, "stateDir": m.state_dir}
            try:
                target = open_target(m.name, connection, state_root, keys)
            except Exception as e:
                seen[record.name][m.name] = MachineSeen(m.name, error=_message(m.name, e))
                continue
            where = (type(target).__name__, target.state_dir, repr(getattr(target, "endpoint", "")))
            groups.setdefault(where, (target, []))[1].append((record, m))

    async def bounded(
        target: Target, members: list[tuple[DeploymentRecord, MachineRow]]
    ) -> list[tuple[str, MachineSeen]]:
        async with limit or contextlib.nullcontext():
            return await _observe_machine(target, members, paths)

    from reconciler.targets.local import LocalTarget

    # local machines are this host: all of them in one worker thread, not one each
    here = [g for g in groups.values() if isinstance(g[0], LocalTarget) and not paths]
    elsewhere = [g for g in groups.values() if not isinstance(g[0], LocalTarget) or paths]
    found = [await asyncio.to_thread(_observe_here, here)] if here else []
    found += await asyncio.gather(*(bounded(t, ms) for t, ms in elsewhere))
    for machine_seen in found:
        for name, machine in machine_seen:
            seen[name][machine.name] = machine
    return {r.name: _assemble(r, seen[r.name]) for r in records}


def _observe_here(
    groups: list[tuple[Target, list[tuple[DeploymentRecord, MachineRow]]]],
) -> list[tuple[str, MachineSeen]]:
    """Local machines, asked in this thread by the agent's own code."""
    found = []
    for target, members in groups:
        if not os.path.isdir(target.state_dir):
            error = f"its folder {target.state_dir} does not exist"
            found += [(r.name, MachineSeen(m.name, error=error)) for r, m in members]
            continue
        asks = [_requests(target.state_dir, r, m) for r, m in members]
        try:
            answers = _ask_here(asks)
        except Exception as e:  # whatever happened there, it is this machine's row
            found += [(r.name, MachineSeen(m.name, error=_message(m.name, e))) for r, m in members]
            continue
        found += [
            (r.name, _seen(m.name, got)) for (r, m), got in zip(members, answers, strict=True)
        ]
    return found


def _assemble(record: DeploymentRecord, seen: dict[str, MachineSeen]) -> Observation:
    obs = Observation(record, seen)
    for inst in record.instances:
        obs.instances.append(_classify(inst, seen.get(inst.machine)))
    return obs


async def _observe_machine(
    target: Target, members: list[tuple[DeploymentRecord, MachineRow]], paths: bool
) -> list[tuple[str, MachineSeen]]:
    """One machine, for every deployment in `members` (its record and its row of it)."""
    from reconciler.targets.local import LocalTarget
    from reconciler.targets.store_paths import present

    def failed(error: str) -> list[tuple[str, MachineSeen]]:
        return [(r.name, MachineSeen(m.name, error=error)) for r, m in members]

    try:
        local = isinstance(target, LocalTarget)
        if local and not os.path.isdir(target.state_dir):
            return failed(f"its folder {target.state_dir} does not exist")
        if not local:  # SSH: one connection for all of them (asyncssh imported only now)
            from reconciler.targets.ssh import SshTarget

            assert isinstance(target, SshTarget)
            try:
                await asyncio.wait_for(target.connect(), CONNECT_TIMEOUT)
            except TimeoutError:
                at = target.endpoint
                return failed(
                    f"cannot connect to {at.user}@{at.host}:{at.port}: no answer within "
                    f"{CONNECT_TIMEOUT:g} s"
                )
        asks = [_requests(target.state_dir, r, m) for r, m in members]
        if local:  # this host, this user, this reconciler's own agent: no process to start
            answers = await asyncio.wait_for(asyncio.to_thread(_ask_here, asks), OBSERVE_TIMEOUT)
        else:
            answers = [await asyncio.wait_for(_ask(target, a), OBSERVE_TIMEOUT) for a in asks]
        found = []
        for (record, m), got in zip(members, answers, strict=True):
            seen = _seen(m.name, got)
            expected = record.paths.get(m.name, {})
            if paths and expected:
                seen.present = await asyncio.wait_for(present(target, expected), OBSERVE_TIMEOUT)
            found.append((record.name, seen))
        return found
    except TimeoutError:
        return failed(f"no answer within {OBSERVE_TIMEOUT:g} s")
    except Exception as e:  # whatever happened there, it is this machine's row
        return failed(_message(target.machine, e))
    finally:
        with contextlib.suppress(Exception):  # closing what never opened properly
            await asyncio.wait_for(target.close(), CONNECT_TIMEOUT)


def _seen(name: str, answers: dict[str, Any]) -> MachineSeen:
    from reconciler.execute.agent_client import answer_of

    seen = MachineSeen(name, reachable=True)  # what fails now is asking it, not reaching it
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
    return seen


Requests = list[tuple[str, dict[str, Any]]]


def _requests(state_dir: str, record: DeploymentRecord, m: MachineRow) -> Requests:
    """read-manifest and status of the deployment's instances on this machine."""
    base = {"stateDir": state_dir, "deployment": record.name}
    mine = [i for i in record.instances if i.machine == m.name]
    items = [_status_item(i, state_dir, m.address) for i in mine]
    return [("read-manifest", base), ("status", {**base, "instances": items})]


async def _ask(target: Target, requests: Requests) -> dict[str, Any]:
    """One round trip to the agent streamed to the machine."""
    from reconciler.execute.agent_client import ask

    return await ask(target, requests)


def _ask_here(asks: list[Requests]) -> list[dict[str, Any]]:
    """The agent's commands run in this process, for a local machine: the same code the
    streamed agent would run, without a python3 started (and the archive compiled) for
    every deployment on every pass. Only read-only commands come here."""
    from reconciler.agent.protocol import run

    answers = []
    for requests in asks:
        got = {}
        for command, request in requests:
            code, answer = run([command], json.dumps(request).encode())
            got[command] = {"code": code, "answer": answer}
        answers.append(got)
    return answers


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


async def log_tail(db: StateDB, record: DeploymentRecord, key: str, state_root: Path) -> str | None:
    """The end of an instance's log on its machine; None for an instance not recorded."""
    from reconciler.execute.requests import deployment_dir
    from reconciler.targets.open import open_target

    inst = next((i for i in record.instances if i.key == key), None)
    machine = next((m for m in record.machines if inst and m.name == inst.machine), None)
    if inst is None or machine is None:
        return None
    connection = machine.connection or {"targetEnv": machine.target_env}
    try:
        target = open_target(machine.name, connection, state_root, RecordedKeysOnly(db))
    except Exception as e:
        return f"(cannot reach {machine.name}: {_message(machine.name, e)})"
    log = f"{deployment_dir(target.state_dir, record.name)}/instances/{inst.service}/log"
    try:
        got = await asyncio.wait_for(
            target.run(f"tail -c {LOG_TAIL_BYTES} {shlex.quote(log)} 2>/dev/null"),
            OBSERVE_TIMEOUT,
        )
        return got.stdout.decode(errors="replace") or "(the log is empty)"
    except Exception as e:  # whatever happened there, it is what the reader sees
        return f"(cannot read the log on {machine.name}: {_message(machine.name, e)})"
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(target.close(), CONNECT_TIMEOUT)


# --- the status document (`status --format json`, the API, the page) -------------------


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
        "conditions": with_stored(conditions(obs, record), record.conditions),
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
                **_health(record, m.name),
            }
            for m in record.machines
        ],
        "instances": [
            {**i.to_json(), "dependsOn": list(record.service_order.get(i.row.service, ()))}
            for i in obs.instances
        ],
    }


def _health(record: DeploymentRecord, machine: str) -> dict[str, Any]:
    """Failover's view of a machine (SPEC §10): failed, and since when."""
    h = record.health.get(machine)
    return {
        "failed": bool(h and h.failed_since),
        "failedSince": _iso(h.failed_since) if h else None,
        "unreachableSince": _iso(h.unreachable_since) if h else None,
    }


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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
