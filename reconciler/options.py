"""The global options: kept light, so `reconciler --help` loads no models machinery."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path


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

    @property
    def state_path(self) -> Path:
        return Path(self.state or os.environ.get("RECONCILER_STATE") or ".reconciler/state.db")

    @property
    def colour(self) -> bool:
        return sys.stdout.isatty() and "NO_COLOR" not in os.environ
