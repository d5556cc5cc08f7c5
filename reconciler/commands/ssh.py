"""`reconciler ssh MACHINE [-- CMD]`: a shell or a command on a machine, reached as the
deployment reaches it (recorded connection, pinned or recorded host key).

A command runs over asyncssh with stdio attached; an interactive shell is handed to the
OpenSSH client, whose terminal handling people know, with the same pinned host key."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
from pathlib import Path

from reconciler.errors import UserError
from reconciler.execute.inputs import compile_with_record, load_one
from reconciler.options import Options
from reconciler.state.db import open_db
from reconciler.state.hostkeys import RecordedHostKeys
from reconciler.targets.local import LocalTarget
from reconciler.targets.open import open_target
from reconciler.targets.ssh import HostKeyStore, SshTarget


def run(opts: Options, machine: str, command: list[str]) -> int:
    loaded, _ = load_one(opts)
    desired, recorded = compile_with_record(opts, loaded)
    have = recorded.machines.get(machine)
    want = desired.machines.get(machine)
    if have is None and want is None:
        names = sorted(set(recorded.machines) | set(desired.machines))
        raise UserError(
            f"no machine {machine} in deployment {loaded.name} (machines: {', '.join(names)})"
        )
    connection = have.connection if have and have.connection else want.connection  # type: ignore[union-attr]
    db = open_db(opts.state_location, write=True) if opts.state_exists else None
    host_keys = RecordedHostKeys(db) if db is not None else _NoKeys()
    target = open_target(machine, connection, opts.state_root, host_keys)
    line = shlex.join(command) if command else None
    if isinstance(target, LocalTarget):
        os.makedirs(target.state_dir, exist_ok=True)
        os.chdir(target.state_dir)
        shell = os.environ.get("SHELL", "/bin/sh")
        argv = ["/bin/sh", "-c", line] if line else [shell]
        os.execv(argv[0], argv)
    assert isinstance(target, SshTarget)
    if line is not None:  # like the shell below, it starts in the machine's stateDir
        return asyncio.run(_stream(target, f"cd {shlex.quote(target.state_dir)} && {line}"))
    return _interactive(target, opts.state_root, host_keys)


async def _stream(target: SshTarget, line: str) -> int:
    try:
        return await target.stream(line)
    finally:
        await target.close()


def _interactive(target: SshTarget, state_root: Path, host_keys: HostKeyStore) -> int:
    e = target.endpoint
    client = shutil.which("ssh")
    if client is None:
        raise UserError("an interactive shell needs the OpenSSH client (ssh); give a command")
    key = e.host_key or host_keys.recorded(e.host, e.port)
    argv = [client, "-p", str(e.port), "-l", e.user]
    if e.identity_file:
        argv += ["-i", os.path.expanduser(e.identity_file), "-o", "IdentitiesOnly=yes"]
    if key:
        known = state_root / "ssh" / f"known_hosts-{target.machine}"
        known.parent.mkdir(parents=True, exist_ok=True)
        entry = f"[{e.host}]:{e.port}" if e.port != 22 else e.host
        known.write_text(f"{entry} {' '.join(key.split()[:2])}\n")
        argv += ["-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes"]
    argv += ["-t", e.host, f"cd {shlex.quote(target.state_dir)} 2>/dev/null; exec $SHELL -l"]
    sys.stdout.flush()
    os.execv(client, argv)


class _NoKeys:
    def recorded(self, host: str, port: int) -> str | None:
        return None

    def record(self, host: str, port: int, key: str) -> None:
        pass
