"""The machine's store: which paths it holds completely (a path counts once its
`.meta/<path>.json` exists)."""

from __future__ import annotations

import os
from typing import Any

from .files import read_json
from .request import abs_path


def cmd_list_store(req: dict[str, Any]) -> dict[str, Any]:
    """{store path: content hash} of every completed path (reconstruct records them)."""
    meta = os.path.join(abs_path(req, "stateDir"), "store", ".meta")
    paths = {}
    for name in sorted(os.listdir(meta)) if os.path.isdir(meta) else []:
        info = read_json(os.path.join(meta, name)) if name.endswith(".json") else None
        path = name[: -len(".json")]
        if isinstance(info, dict) and os.path.isdir(os.path.join(meta, "..", path)):
            paths[path] = info.get("content_hash")
    return {"paths": paths}
