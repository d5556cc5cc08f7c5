"""The local store cache beside the state DB: `<dir>/<hash>-<name>/` plus
`<dir>/.meta/<hash>-<name>.json` holding its content hash. The same layout is used on
every target, so a transfer is a tar stream of paths and their meta files."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

META = ".meta"


@dataclass(frozen=True)
class PathInfo:
    path: str  # "<hash>-<name>"
    content_hash: str
    size: int
    files: int


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()  # builds run elsewhere: paths must not be relative

    def dir(self, path: str) -> Path:
        return self.root / path

    def meta_file(self, path: str) -> Path:
        return self.root / META / f"{path}.json"

    def info(self, path: str) -> PathInfo | None:
        """A path counts only when both it and its meta file exist (it was completed)."""
        try:
            data = json.loads(self.meta_file(path).read_text())
        except (OSError, ValueError):
            return None
        if not self.dir(path).is_dir():
            return None
        return PathInfo(**data)

    def write_meta(self, info: PathInfo) -> None:
        meta = self.meta_file(info.path)
        meta.parent.mkdir(parents=True, exist_ok=True)
        tmp = meta.with_name(f".{meta.name}.{os.getpid()}")
        tmp.write_text(json.dumps(asdict(info), sort_keys=True))
        os.replace(tmp, meta)

    def scratch(self) -> Path:
        """A folder for work in progress, on the same filesystem (renames are atomic)."""
        tmp = self.root / ".tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp
