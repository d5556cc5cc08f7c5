"""`reconciler destroy`: deactivate everything in reverse dependency order and remove the
deployment's profiles from its machines — the transition to an empty desired state, under
the same locks and rollback. Persistent state is kept (`gc --delete-state` removes it)."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys

from reconciler.commands.options import Options
from reconciler.desired.state import DesiredState
from reconciler.errors import UserError
from reconciler.execute.agent import ensure_agent, ship
from reconciler.execute.requests import deployment_dir
from reconciler.execute.transition import Transition, TransitionFailed, run_transition
from reconciler.plan.diff import make_plan
from reconciler.state.db import exclusive, open_db, transaction
from reconciler.state.hostkeys import RecordedHostKeys
from reconciler.state.journal import Journal
from reconciler.state.record import (
    finish_attempt,
    read_recorded,
    record_generation,
    recorded_requests,
    start_attempt,
)
from reconciler.store.local import LocalStore
from reconciler.targets.open import open_target


def run(opts: Options, yes: bool, keep_machines: bool = False) -> int:
    name = opts.deployment
    if name is None:
        raise UserError("destroy needs -d NAME: which deployment to take down")
    with exclusive(opts.state_path, "destroy"):
        db = open_db(opts.state_path, write=True)
        assert db is not None
        recorded = read_recorded(db, name)
        from reconciler.execute.provision import destroy_all, interrupted_creates

        half_made = interrupted_creates(opts.state_path, name, set(recorded.machines))
        if not recorded.instances and not recorded.machines and not half_made:
            print(f"Nothing of {name} is deployed.")
            return 0
        if sys.stdin.isatty() and not yes:
            answer = input(
                f"Take down all {len(recorded.instances)} instances of {name}? "
                "Only 'yes' is accepted: "
            )
            if answer.strip() != "yes":
                print("Nothing was changed.", file=sys.stderr)
                return 1
        empty = DesiredState(name, None, {}, {}, {}, {}, {})
        plan = make_plan(empty, recorded)
        attempt = start_attempt(db, empty, plan.to_json())
        state_root = opts.state_path.parent
        store = LocalStore(state_root / "store")
        agent = ensure_agent(store)
        host_keys = RecordedHostKeys(db)
        targets = {
            m: open_target(m, have.connection, state_root, host_keys)
            for m, have in sorted(recorded.machines.items())
            if have.connection
        }
        generation = 1 + (recorded.generation or 0)
        transition = Transition(
            desired=empty,
            recorded=recorded,
            plan=plan,
            targets=targets,
            agent=agent.path,
            attempt=attempt,
            journal=Journal(db, attempt),
            generation=generation,
            old_requests=recorded_requests(db, name),
            secrets={},
        )

        async def take_down() -> None:
            try:
                await ship(targets.values(), store, agent)
                await run_transition(transition)
                for target in targets.values():
                    folder = shlex.quote(deployment_dir(target.state_dir, name))
                    await target.check(
                        f"rm -rf {folder}/profiles {folder}/current "
                        f"{folder}/manifest.json {folder}/instances"
                    )
            finally:
                await asyncio.gather(*(t.close() for t in targets.values()), return_exceptions=True)

        try:
            asyncio.run(take_down())
        except TransitionFailed as failed:
            finish_attempt(
                db, attempt, "rolled_back" if failed.rolled_back else "stalled", failed.reason
            )
            print(f"error: {failed.reason}", file=sys.stderr)
            return 1 if failed.rolled_back else 3
        number = record_generation(db, attempt, empty, {}, {})
        provisioned: list[tuple[str, str, str | None]] = [
            (m.name, m.target_env, m.provider_id)
            for m in recorded.machines.values()
            if m.provider_id is not None
        ]
        provisioned += half_made
        if provisioned and not keep_machines:
            errors = asyncio.run(destroy_all(opts.state_path, name, provisioned))
            for machine, error in sorted(errors.items()):
                print(f"{machine}: destroy failed: {error}", file=sys.stderr)
            if errors:
                return 1
            with transaction(db):
                db.execute("DELETE FROM machines WHERE deployment = ?", [name])
    if opts.format == "json":
        gone = [] if keep_machines else [m for m, _, _ in provisioned]
        print(
            json.dumps(
                {
                    "generation": number,
                    "deactivated": plan.deactivation_order,
                    "destroyedMachines": gone,
                }
            )
        )
    else:
        kept = "persistent state was kept"
        if provisioned and not keep_machines:
            kept = f"{len(provisioned)} provisioned machines destroyed, with their disks"
        print(
            f"Destroyed {name}: {len(plan.deactivation_order)} instances taken down "
            f"(generation {number}); {kept}."
        )
    return 0
