"""Steps 4-6 of an attempt (SPEC §3): lock every affected machine, then switch from the
recorded generation to the desired one, and on any failure or interruption roll back.

The transition is Disnix's set arithmetic on instances: deactivate old − new in reverse
dependency order of the old graph, move the state of stateful services that change
machine, switch machine profiles, activate new − old in dependency order of the new
graph. Independent instances run in parallel, at most `maxParallel` per machine, so the
wall time follows the critical path; only service-level order counts, so cycles between
machines do no harm. Unchanged instances are not touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shlex
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.desired.state import DesiredInstance, DesiredState
from reconciler.execute.agent_client import AgentError, AgentSession, fetch_snapshot
from reconciler.execute.keep_snapshots import age, read_kept
from reconciler.execute.leases import WAIT_FOR_HELD, Leases
from reconciler.execute.outcome import Failed, Reason, Stalled
from reconciler.execute.requests import activation_request, deployment_dir
from reconciler.execute.rollout import activate_services
from reconciler.execute.undo import message, undo
from reconciler.plan.failover import iso, restored_from
from reconciler.plan.types import Plan, StateMove
from reconciler.state.journal import Journal
from reconciler.state.recorded import RecordedInstance, RecordedState
from reconciler.targets.base import Target, TargetError


@dataclass
class Transition:
    desired: DesiredState
    recorded: RecordedState
    plan: Plan
    targets: dict[str, Target]  # every machine involved, by name
    agent: str  # the agent's store path name
    attempt: str
    journal: Journal
    generation: int  # the number the attempt becomes when it succeeds
    old_requests: Mapping[str, dict[str, Any]]  # recorded instances' activation requests
    secrets: Mapping[str, Mapping[str, tuple[bytes, str]]]  # machine → key → (value, mode)
    # what was done, in order: ("deactivate" | "activate", key) or ("switch", machine)
    done: list[tuple[str, str]] = field(default_factory=list)
    rolling: dict[str, tuple[int, int]] = field(default_factory=dict)  # service → batch, of
    say: Callable[[str], None] | None = None  # progress for a person (rollout batches)
    locked_wrappers: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)  # from kept snapshots, for a person
    activating: set[str] = field(default_factory=set)  # started, not yet answered
    sessions: dict[str, AgentSession] = field(default_factory=dict)
    _leases: Leases | None = None
    _slots: dict[str, asyncio.Semaphore] = field(default_factory=dict)

    def state_dir(self, machine: str) -> str:
        return self.targets[machine].state_dir

    def machine_slot(self, machine: str) -> asyncio.Semaphore:
        """At most maxParallel activations and deactivations at once on a machine."""
        if machine not in self._slots:
            m = self.desired.machines.get(machine)
            self._slots[machine] = asyncio.Semaphore(m.max_parallel if m else 1)
        return self._slots[machine]

    def report(self, text: str) -> None:
        if self.say is not None:
            self.say(text)

    @property
    def leases(self) -> Leases:
        if self._leases is None:
            dirs = {m: t.state_dir for m, t in self.targets.items()}
            self._leases = Leases(self.agent_call, dirs, self.attempt)
        return self._leases

    def session(self, machine: str) -> AgentSession:
        if machine not in self.sessions:
            self.sessions[machine] = AgentSession(self.targets[machine], self.agent)
        return self.sessions[machine]

    async def agent_call(
        self, machine: str, command: str, request: dict[str, Any]
    ) -> dict[str, Any]:
        return await self.session(machine).call(command, request)

    async def end_sessions(self) -> None:
        """Stop the machines' agents: after an interruption, so that nothing they were
        in the middle of goes on behind the rollback's back; at the end, to finish."""
        sessions, self.sessions = list(self.sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)

    # --- step 4: locks ------------------------------------------------------------

    async def lock_all(self) -> list[str]:
        """Lease every machine in name order; any refusal releases all and stops."""
        # the agents start everywhere at once; the leases are then taken one by one
        await asyncio.gather(
            *(self.session(m).open() for m in self.targets), return_exceptions=True
        )
        warnings = []
        for machine in sorted(self.targets):
            try:
                took_over = await self.leases.take(machine, wait=WAIT_FOR_HELD)
            except (AgentError, TargetError) as e:
                await self.unlock_all()
                raise Failed(
                    Reason.LOCK_REFUSED, f"could not lock {machine}: {message(e)}"
                ) from None
            if took_over:
                warnings.append(f"{machine}: took over an expired lock of {took_over}")
        await self.lock_wrappers()
        return warnings

    async def lock_wrappers(self) -> None:
        """A wrapper about to be taken down may refuse (`wrapper lock` exits non-zero):
        then nothing changes. Without its recorded request it cannot be asked."""
        for key in self.plan.deactivation_order:
            request = self.old_requests.get(key)
            have = self.recorded.instances.get(key)
            if have is None or have.type != "wrapper" or request is None:
                continue
            try:
                await self.agent_call(have.machine, "wrapper", {**request, "action": "lock"})
            except (AgentError, TargetError) as e:
                await self.unlock_all()
                raise Failed(Reason.LOCK_REFUSED, f"{key} refused its lock: {message(e)}") from None
            self.locked_wrappers.append(key)

    async def unlock_all(self) -> None:
        for key in reversed(self.locked_wrappers):
            machine = self.recorded.instances[key].machine
            with contextlib.suppress(AgentError, TargetError):
                await self.agent_call(
                    machine, "wrapper", {**self.old_requests[key], "action": "unlock"}
                )
        self.locked_wrappers.clear()
        await self.leases.release_all()

    # --- step 5: the transition -------------------------------------------------------

    async def run(self) -> dict[str, dict[str, Any]]:
        """Returns the activation request of every desired instance (for the record)."""
        requests = {
            key: activation_request(self.desired, key, self.state_dir(inst.machine))
            for key, inst in self.desired.instances.items()
        }
        await self.upload_keys()
        await self.deactivate_obsolete()
        await self.move_state(requests)
        await self.switch_profiles()
        await activate_services(self, requests)
        return requests

    async def upload_keys(self) -> None:
        for machine, keys in sorted(self.secrets.items()):
            if machine not in self.targets:  # a failed machine is not touched
                continue
            folder = f"{deployment_dir(self.state_dir(machine), self.desired.deployment)}/keys"
            target = self.targets[machine]
            await target.check(
                f"mkdir -p {shlex.quote(folder)} && chmod 0700 {shlex.quote(folder)}"
            )
            for name, (value, mode) in sorted(keys.items()):
                entry = self.journal.begin("transition", machine, "upload-key", key=name)
                await target.write_file(f"{folder}/{name}", value, mode)
                self.journal.end(entry)

    async def deactivate(self, key: str) -> None:
        inst = self.recorded.instances[key]
        request = self.old_requests.get(key) or _minimal_request(
            self, key, inst.machine, inst.service, inst.type, inst.package_path
        )
        async with self.machine_slot(inst.machine):
            entry = self.journal.begin("transition", inst.machine, "deactivate", instance=key)
            await self.agent_call(inst.machine, "deactivate", request)
            self.journal.end(entry)
            self.done.append(("deactivate", key))

    async def deactivate_obsolete(self) -> None:
        """Old instances in reverse dependency order, but those a rollout replaces and
        the stateless ones that stop only once their service runs elsewhere."""
        later = {k for r in self.plan.rollouts for k in r.keys} | set(self.plan.deactivate_after)
        order = [k for k in self.plan.deactivation_order if k not in later]
        old = self.recorded.instances
        # X waits for every deactivating instance of a service that depends on X's service
        dependents: dict[str, set[str]] = {}
        for service, after in self.recorded.service_order.items():
            for dep in after:
                dependents.setdefault(dep, set()).add(service)
        waits = {
            key: {k for k in order if old[k].service in dependents.get(old[key].service, set())}
            for key in order
        }

        await self._run_dag(order, waits, self.deactivate)

    async def move_state(self, requests: Mapping[str, dict[str, Any]]) -> None:
        """Snapshot on the old machine, restore on the new one, before anything that
        depends on it starts; from a failed machine, restore the snapshot the controller
        kept instead (the plan moves nothing from a failed machine without one)."""
        for move in self.plan.moves:
            dep = self.desired.deployment
            entry = self.journal.begin(
                "transition", move.target, "move-state", service=move.service, source=move.source
            )
            new = requests[f"{move.service}@{move.target}"]["instance"]
            # a wrapper snapshots and restores itself, a process (moveState) its state
            # folder: they are asked with their own requests
            wrapper = self.desired.instances[f"{move.service}@{move.target}"].type in (
                "wrapper",
                "process",
            )
            failed = move.source in self.recorded.failed
            kept = self.recorded.snapshots[f"{move.service}@{move.source}"] if failed else None
            if kept is None:
                name, data = await self.take_snapshot(move, wrapper)
            else:
                name, data = os.path.basename(kept.path), read_kept(move.target, kept)
            landing = f"{deployment_dir(self.state_dir(move.target), dep)}/snapshots/{name}"
            await self.targets[move.target].write_file(landing, data, "0600")
            await self.agent_call(
                move.target,
                "restore",
                {
                    "stateDir": self.state_dir(move.target),
                    "deployment": dep,
                    "service": move.service,
                    "from": landing,
                    **({"instance": new} if wrapper else {}),
                },
            )
            if kept is None:
                self.journal.end(entry)
                continue
            seconds = time.time() - kept.taken_at
            self.journal.end(
                entry, snapshotTakenAt=iso(kept.taken_at), snapshotAge=round(seconds, 1)
            )
            said = f"{restored_from(kept)} ({age(seconds)} old)"
            self.restored.append(f"{move.service}@{move.target}: {said}")

    async def take_snapshot(self, move: StateMove, wrapper: bool) -> tuple[str, bytes]:
        """The snapshot of a live machine's instance: its file name and bytes."""
        old = self.old_requests.get(f"{move.service}@{move.source}", {}).get("instance")
        there, data = await fetch_snapshot(
            functools.partial(self.agent_call, move.source),
            self.targets[move.source],
            self.desired.deployment,
            move.service,
            old if wrapper else None,
        )
        return os.path.basename(there), data

    async def switch_profiles(self) -> None:
        """All machines at once (each switch is one atomic rename there)."""

        async def switch(name: str) -> None:
            entry = self.journal.begin(
                "transition",
                name,
                "switch-profile",
                generation=self.generation,
                previous=self._previous_profile(name),
            )
            await self.agent_call(name, "switch-profile", self._profile(name))
            self.journal.end(entry)
            self.done.append(("switch", name))

        done = await asyncio.gather(
            *(switch(n) for n in sorted(self.desired.machines) if n in self.targets),
            return_exceptions=True,
        )
        for failed in done:
            if isinstance(failed, BaseException):
                raise failed

    async def _run_dag(
        self,
        nodes: list[str],
        waits: Mapping[str, set[str]],
        action: Callable[[str], Awaitable[None]],
    ) -> None:
        """Each node after the ones it waits for (the action keeps to maxParallel per
        machine); the first failure stops everything not yet started, and is raised."""
        done = {n: asyncio.Event() for n in nodes}
        failures: list[BaseException] = []

        async def one(node: str) -> None:
            try:
                for other in waits.get(node, ()):
                    await done[other].wait()
                if not failures:
                    await action(node)
            except Exception as e:
                failures.append(e)
            finally:
                done[node].set()

        await asyncio.gather(*(one(n) for n in nodes))
        if failures:
            raise failures[0]

    # --- step 6: rollback ---------------------------------------------------------------

    async def rollback(self) -> list[str]:
        """Undo what was done, newest first — a rollout batch by batch, in reverse;
        returns what could not be undone."""
        problems: list[str] = []
        # an activation interrupted half-way may have started its process: stop it too
        for key in sorted(self.activating):
            await self._undo_activation(problems, key)
        for action, subject in reversed(self.done):
            if action == "activate":
                await self._undo_activation(problems, subject)
            elif action == "deactivate":
                old = self.old_requests.get(subject)
                if old is None:
                    problems.append(f"{subject}: no recorded activation request to restore it from")
                    continue
                machine = self.recorded.instances[subject].machine
                await self._undo(problems, machine, "activate", old, subject)
            elif (previous := self._previous_profile(subject)) is not None:
                await self._undo(problems, subject, "switch-profile", previous, subject)
        return problems

    async def _undo_activation(self, problems: list[str], key: str) -> None:
        inst = self.desired.instances[key]
        request = activation_request(self.desired, key, self.state_dir(inst.machine))
        await self._undo(problems, inst.machine, "deactivate", request, key)

    async def _undo(
        self, problems: list[str], machine: str, command: str, request: dict[str, Any], what: str
    ) -> None:
        await undo(self.agent_call, self.journal, problems, machine, command, request, what)

    # --- profiles and manifests ---------------------------------------------------------

    def _profile(self, machine: str) -> dict[str, Any]:
        m = self.desired.machines[machine]
        packages = self.desired.packages
        rev = self.desired.revision
        instances = _manifest_instances(self.desired.instances.values(), machine)
        return {
            "stateDir": self.state_dir(machine),
            "deployment": self.desired.deployment,
            "generation": self.generation,
            "profile": {
                "packages": list(m.profile),
                "paths": sorted({p for n in m.profile for p in packages[n].closure}),
                # what gc keeps while this profile is kept: everything the generation needs
                "closure": [*m.closure, self.agent],
                "services": sorted({i["service"] for i in instances.values()}),
            },
            "manifest": {
                "deployment": self.desired.deployment,
                "machine": machine,
                "generation": self.generation,
                "commit": rev.sha if rev else None,
                "attempt": self.attempt,
                "instances": instances,
                "allocations": _allocations_of(self.desired.deployment, self.desired.allocations),
            },
        }

    def _previous_profile(self, machine: str) -> dict[str, Any] | None:
        have = self.recorded.machines.get(machine)
        if have is None or self.recorded.generation is None:
            return None
        instances = _manifest_instances(self.recorded.instances.values(), machine)
        return {
            "stateDir": self.state_dir(machine),
            "deployment": self.desired.deployment,
            "generation": self.recorded.generation,
            "profile": {"packages": list(have.profile)},
            "ifMissing": True,
            "manifest": {
                "deployment": self.desired.deployment,
                "machine": machine,
                "generation": self.recorded.generation,
                "commit": self.recorded.revision,
                "instances": instances,
                "allocations": _allocations_of(self.desired.deployment, self.recorded.allocations),
            },
        }


def _allocations_of(deployment: str, allocations: Mapping[str, str]) -> dict[str, str]:
    """The deployment's allocated values, so `reconstruct` compiles the same addresses
    and ports the machines run with."""
    return {
        k: v for k, v in allocations.items() if f"/{deployment}/" in k or k == "container-subnet"
    }


def _manifest_instances(
    instances: Iterable[DesiredInstance | RecordedInstance], machine: str
) -> dict[str, dict[str, str]]:
    """What a machine's manifest says about its instances (`reconstruct` reads it)."""
    return {
        i.key: {
            "service": i.service,
            "type": i.type,
            "identity": i.identity,
            "package": i.package_path,
        }
        for i in sorted(instances, key=lambda i: i.key)
        if i.machine == machine
    }


def _minimal_request(
    t: Transition, key: str, machine: str, service: str, kind: str, package: str
) -> dict[str, Any]:
    """Enough to deactivate an instance recorded without its request."""
    state_dir = t.state_dir(machine)
    return {
        "stateDir": state_dir,
        "deployment": t.desired.deployment,
        "identity": "",
        "instance": {
            "key": key,
            "service": service,
            "type": kind,
            "package": f"{state_dir}/store/{package}",
            "command": None,
            "user": None,
            "env": {},
            "health": None,
            "host": "",
            "port": None,
        },
    }


async def run_transition(t: Transition) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Lock, transition, unlock. Returns (requests, warnings: a lock taken over, state
    restored from a kept snapshot); on failure rolls back and
    raises Failed (the previous generation is intact) or Stalled (the rollback failed)."""
    warnings = await t.lock_all()
    try:
        async with t.leases.renewing():
            try:
                requests = await t.run()
            except (AgentError, TargetError, asyncio.CancelledError, KeyboardInterrupt) as e:
                interrupted = isinstance(e, asyncio.CancelledError | KeyboardInterrupt)
                reason = "interrupted" if interrupted else message(e)
                await t.end_sessions()
                problems = await t.rollback()
                if problems:
                    raise Stalled(Reason.ROLLBACK_FAILED, reason, problems) from None
                raise Failed(Reason.ROLLED_BACK, reason) from None
        return requests, [*warnings, *t.restored]
    finally:
        await t.unlock_all()
        await t.end_sessions()
