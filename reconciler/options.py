"""The global options: kept light, so `reconciler --help` loads no models machinery."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.models.keys import KeyPolicy


@dataclass(frozen=True)
class Options:
    repo: str = "."
    path: str | None = None
    ref: str | None = None
    state: str | None = None
    deployment: str | None = None
    format: str = "text"
    verbose: int = 0
    quiet: bool = False
    keys_dir: str | None = None
    key_env_prefix: str | None = None

    @property
    def state_location(self) -> str:
        """A SQLite file (the default) or a `postgresql://` URL (SPEC §11)."""
        return self.state or os.environ.get("RECONCILER_STATE") or ".reconciler/state.db"

    @property
    def state_is_url(self) -> bool:
        return self.state_location.startswith(("postgresql://", "postgres://"))

    @property
    def state_path(self) -> Path:
        """The SQLite file; with PostgreSQL, a name under `state_root` for this host's
        own lock files."""
        if self.state_is_url:
            return self.state_root / "postgresql"
        return Path(self.state_location)

    @property
    def state_root(self) -> Path:
        """Where the local store cache and `local` machines live: beside the SQLite file,
        or `$RECONCILER_HOME` (default `.reconciler`) with PostgreSQL."""
        if self.state_is_url:
            return Path(os.environ.get("RECONCILER_HOME") or ".reconciler")
        return self.state_path.parent

    @property
    def state_exists(self) -> bool:
        """Whether anything was ever recorded here (a server is always there)."""
        return self.state_is_url or self.state_path.exists()

    @property
    def state_label(self) -> str:
        """The state for messages: a URL without its password."""
        if not self.state_is_url:
            return str(self.state_path)
        return without_password(self.state_location)

    @property
    def key_policy(self) -> KeyPolicy:
        from reconciler.models.keys import KeyPolicy

        return KeyPolicy.of(self.keys_dir, self.key_env_prefix)

    @property
    def colour(self) -> bool:
        return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def without_password(url: str) -> str:
    """A database URL fit for messages: its password (`user:PASSWORD@`, `password=`)
    replaced by `***`."""
    url = re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)
