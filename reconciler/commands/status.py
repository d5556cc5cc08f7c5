"""`reconciler status`: the last applied generation and the last attempt from the state
DB, and what the machines say now — reachable or not, their generation, each instance
active, dead, missing or drifted, and healthy — with the conditions that follow."""

from __future__ import annotations

import json
from typing import Any

from reconciler.commands.context import check_format
from reconciler.commands.tables import commit_text, dash, print_table, when, yes_no
from reconciler.execute.observe import Observation, nothing_json, observe, status_json
from reconciler.options import Options
from reconciler.state.db import StateDB
from reconciler.state.rows import DeploymentRecord, pick_recorded, read_deployment, reading


def load_record(
    opts: Options,
) -> tuple[StateDB | None, str | None, DeploymentRecord | None]:
    """The state DB (read-only), the deployment's name and its record: status, check, history."""
    from reconciler.state.db import open_db

    check_format(opts, ("text", "json"))
    db = open_db(opts.state_location, write=False)
    with reading(opts.state_label):
        name = pick_recorded(db, opts.deployment)
        record = read_deployment(db, name) if db is not None and name else None
    return db, name, record


def run(opts: Options) -> int:
    db, name, record = load_record(opts)
    if record is None or db is None:
        return _nothing(opts, name)
    obs = observe(db, record, opts.state_root)
    data = status_json(obs)
    if opts.format == "json":
        print(json.dumps(data, indent=2))
    else:
        _print_status(data, obs)
    return 0


def _nothing(opts: Options, name: str | None) -> int:
    if opts.format == "json":
        print(json.dumps(nothing_json(name), indent=2))
    else:
        print(nothing_recorded(opts, name))
    return 0


def nothing_recorded(opts: Options, name: str | None) -> str:
    if name:
        return f"Nothing of {name} is recorded in {opts.state_label}."
    return f"Nothing is recorded in {opts.state_label}."


def _print_status(data: dict[str, Any], obs: Observation) -> None:
    gen, last = data["generation"], data["lastAttempt"]
    if gen is None:
        print(f"Deployment {data['deployment']}: no generation applied yet")
    else:
        print(
            f"Deployment {data['deployment']}: generation {gen['number']}, "
            f"{commit_text(gen['commit'], gen['subject'])}, applied {when(gen['appliedAt'])}"
        )
    if last is not None:
        print(
            f"Last attempt: {last['status']}, {commit_text(last['commit'], last['subject'])}, "
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
                    dash(m["generation"]),
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
                [i["key"], i["type"], dash(i["port"]), i["state"], yes_no(i["healthy"])]
                for i in data["instances"]
            ],
        )
