"""JSON merge patch (RFC 7396) of model files, keeping each value's origin."""

from __future__ import annotations

from typing import Any

from reconciler.models.yamlmarks import Marks


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply `patch` to `target` as RFC 7396 says; neither argument is modified."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def locate(marks: Marks, path: tuple[str | int, ...]) -> tuple[str, int] | None:
    """The mark of `path`, or of its nearest marked ancestor."""
    for end in range(len(path), 0, -1):
        found = marks.get(path[:end])
        if found:
            return found
    return None
