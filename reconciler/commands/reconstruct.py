"""`reconciler reconstruct`: rebuild a lost record from the machines' manifests (SPEC §3
step 7). The newest manifest names the generation, commit and allocated values; the
models at that commit, compiled with those values, give everything else. What a machine
runs that the models do not say is reported, and recorded so that the next plan
replaces it rather than pretending it matches."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from typing import Any

from reconciler.desired.compile import compile_deployment
from reconciler.desired.state import DesiredState
from reconciler.errors import UserError
from reconciler.execute.agent_client import answer_of, ask
from reconciler.execute.inputs import load_one
from reconciler.execute.requests import activation_request
from reconciler.options import Options
from reconciler.state.attempts import record_generation, set_reason, start_attempt
from reconciler.state.db import exclusive, open_db
from reconciler.state.hostkeys import RecordedHostKeys
from reconciler.state.rows import read_recorded
from reconciler.targets.base import Target, TargetError
from reconciler.targets.open import open_target
from reconciler.text import plural


@dataclasses.dataclass
class Found:
    machine: str
    manifest: dict[str, Any]
    store: dict[str, str]  # store path → content hash
    error: str | None = None


def run(opts: Options) -> int:
    head, _ = load_one(opts)
    name = head.name
    with exclusive(opts.state_path, "reconstruct"):
        db = open_db(opts.state_location, write=True)
        assert db is not None
        have = read_recorded(db, name)
        if have.generation is not None or have.instances:
            raise UserError(
                f"the state DB {opts.state_label} already records {name} (generation "
                f"{have.generation}); reconstruct rebuilds a lost record: give another --state"
            )
        machines = compile_deployment(head, have.allocations).machines
        targets = {
            m: open_target(m, d.connection, opts.state_root, RecordedHostKeys(db))
            for m, d in sorted(machines.items())
        }
        found = asyncio.run(_read_all(name, targets))
        for f in found:
            if f.error:
                print(f"warning: {f.machine}: {f.error}", file=sys.stderr)
        usable = [f for f in found if f.manifest.get("generation") is not None]
        if not usable:
            raise UserError(
                f"no machine of {name} has a manifest ({', '.join(sorted(targets))} asked): "
                "nothing to reconstruct"
            )
        newest = max(usable, key=lambda f: f.manifest["generation"])
        number, commit = newest.manifest["generation"], newest.manifest.get("commit")
        if commit is None:
            raise UserError(f"{newest.machine}: its manifest names no commit to compile")
        allocations: dict[str, str] = {}
        for f in sorted(usable, key=lambda f: f.manifest["generation"]):
            allocations.update(f.manifest.get("allocations") or {})
        at, _ = load_one(dataclasses.replace(opts, ref=commit, deployment=name))
        desired = compile_deployment(at, {**have.allocations, **allocations})
        recorded, problems = _as_running(desired, usable, number)
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        attempt = start_attempt(db, recorded, {"reconstructed": True})
        present = {
            f.machine: {
                p: h for p, h in f.store.items() if p in desired.machines[f.machine].closure
            }
            for f in found
            if f.machine in desired.machines
        }
        requests = {
            key: activation_request(desired, key, targets[i.machine].state_dir)
            for key, i in recorded.instances.items()
            if i.machine in targets
        }
        record_generation(db, attempt, recorded, present, requests, number=number)
        set_reason(db, attempt, f"reconstructed from the manifests of {len(usable)} machines")
    if opts.format == "json":
        print(
            json.dumps(
                {
                    "deployment": name,
                    "generation": number,
                    "commit": commit,
                    "instances": len(recorded.instances),
                    "problems": problems,
                }
            )
        )
    else:
        print(
            f"Reconstructed {name}: generation {number} (commit {commit[:12]}), "
            f"{plural(len(recorded.instances), 'instance')} on "
            f"{plural(len(usable), 'machine')}. Run `reconciler plan` to compare."
        )
    return 0


async def _read_all(name: str, targets: dict[str, Target]) -> list[Found]:
    async def one(machine: str, target: Target) -> Found:
        base = {"stateDir": target.state_dir, "deployment": name}
        try:
            answers = await ask(target, [("read-manifest", base), ("list-store", base)])
        except (TargetError, OSError) as e:
            return Found(machine, {}, {}, f"cannot read its manifest: {e}")
        finally:
            await target.close()
        manifest = answer_of(answers, "read-manifest")
        store = answer_of(answers, "list-store")
        if not isinstance(manifest, dict) or manifest.get("deployment") not in (None, name):
            return Found(machine, {}, {}, "its manifest is unreadable or of another deployment")
        return Found(machine, manifest, (store or {}).get("paths", {}))

    return list(await asyncio.gather(*(one(m, t) for m, t in targets.items())))


def _needed(store: dict[str, str], closure: set[str]) -> dict[str, str]:
    return {p: h for p, h in store.items() if p in closure}


def _as_running(
    desired: DesiredState, found: list[Found], number: int
) -> tuple[DesiredState, list[str]]:
    """The desired state narrowed to what the machines say they run: an instance whose
    identity differs keeps the machine's identity (so the next plan replaces it); one a
    machine lacks is left out (so the next plan activates it)."""
    problems = []
    running: dict[str, dict[str, Any]] = {}
    for f in found:
        if f.manifest["generation"] != number:
            problems.append(
                f"{f.machine} is at generation {f.manifest['generation']}, not {number}: "
                "the next apply brings it in line"
            )
        for key, inst in (f.manifest.get("instances") or {}).items():
            running[key] = inst
    instances = {}
    for key, inst in desired.instances.items():
        seen = running.get(key)
        if seen is None:
            problems.append(f"{key} is in the models but on no machine: the next apply adds it")
        elif seen.get("identity") != inst.identity:
            problems.append(f"{key} runs another version than the models say: plan shows it")
            instances[key] = dataclasses.replace(inst, identity=str(seen.get("identity")))
        else:
            instances[key] = inst
    for key in sorted(set(running) - set(desired.instances)):
        problems.append(
            f"{key} runs but is not in the models at that commit: it is not recorded; "
            "take it down by hand"
        )
    return dataclasses.replace(desired, instances=instances), problems
