"""The global options: kept light, so `reconciler --help` loads no models machinery."""

from __future__ import annotations

import os
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
    def state_path(self) -> Path:
        return Path(self.state or os.environ.get("RECONCILER_STATE") or ".reconciler/state.db")

    @property
    def key_policy(self) -> KeyPolicy:
        from reconciler.models.keys import KeyPolicy

        return KeyPolicy.of(self.keys_dir, self.key_env_prefix)

    @property
    def colour(self) -> bool:
        return sys.stdout.isatty() and "NO_COLOR" not in os.environ
