"""`reconciler schema`: the JSON Schema of a model file (or of reconciler.yaml), for
editors; nothing is read but the command line."""

from __future__ import annotations

import json

from reconciler.errors import UserError
from reconciler.models.editor_schema import TARGETS, schema_for


def run(target: str) -> int:
    if target not in TARGETS:
        raise UserError(f"--for {target}: choose one of {', '.join(TARGETS)}")
    print(json.dumps(schema_for(target), indent=2))
    return 0
