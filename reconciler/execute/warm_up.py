"""`apply --copy-only` reaches out first: before it loads its models (0.1-0.2 s of a command
whose transfer may take 0.5 s), it starts a master connection to each SSH machine the
state recorded for the deployment, so the handshake is done by the time the transfer asks
(targets/ssh.py `warm`). A machine whose endpoint or host key the models changed gets a
connection of its own, as without this; an unused master ends with the command."""

from __future__ import annotations

import itertools

from reconciler.errors import UserError
from reconciler.options import Options
from reconciler.state.db import database_errors, open_db
from reconciler.state.hostkeys import RecordedHostKeys, recorded_connections
from reconciler.targets.ssh import SshEndpoint, warm


def warm_recorded(opts: Options, scope: list[str] | None, most: int) -> None:
    """Warm connections to the first `most` recorded SSH machines (of `scope`, if given).
    A state it cannot read, or a damaged record, it leaves to the command, which opens the
    state next and says what is wrong."""
    try:
        db = open_db(opts.state_location, write=False)
    except _unusable():
        return
    if db is None:
        return
    try:
        keys = RecordedHostKeys(db)
        endpoints = (
            (e, key)
            for name, connection in recorded_connections(db, opts.deployment).items()
            if scope is None or name in scope
            if (ssh := connection.get("ssh")) and ssh.get("host")
            if (key := (e := SshEndpoint.of(ssh)).demanded_key(keys))
        )
        chosen = list(itertools.islice(endpoints, most))
    except _unusable():
        return
    finally:
        db.close()
    warm(chosen)


def _unusable() -> tuple[type[Exception], ...]:
    """What reading the state can raise (asked when raised: psycopg's once it is loaded)."""
    return (UserError, OSError, ValueError, *database_errors())
