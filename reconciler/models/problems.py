"""pydantic validation errors → Problems located at file:line, in words a person reads."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from reconciler.errors import Problem
from reconciler.models.merge import locate
from reconciler.models.schema import DEPLOYMENT_PATTERN, NAME_PATTERN
from reconciler.models.yamlmarks import Marks

NAME_RULE = (
    "use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit, "
    "at most 63 characters"
)


def dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")


def from_validation(
    error: ValidationError, data: Any, marks: Marks, root: type[BaseModel], default_file: str
) -> list[Problem]:
    problems = []
    for err in error.errors():
        path = _data_path(data, err["loc"])
        message = _message(err, root)
        if err["type"] == "missing":
            path = (*path, str(err["loc"][-1]))
        file, line = locate(marks, path) or (default_file, 0)
        problems.append(Problem(file, line, dotted(path), message))
    return problems


def _data_path(data: Any, loc: tuple[int | str, ...]) -> tuple[str | int, ...]:
    """Follow pydantic's loc through the actual data, skipping its union/validator tags."""
    path: list[str | int] = []
    for elem in loc:
        if isinstance(data, dict) and elem in data:
            pass
        elif not (isinstance(data, list) and isinstance(elem, int) and elem < len(data)):
            continue
        path.append(elem)
        data = data[elem]
    return tuple(path)


def _message(err: Any, root: type[BaseModel]) -> str:
    kind, got = err["type"], err.get("input")
    pattern = err.get("ctx", {}).get("pattern") if kind == "string_pattern_mismatch" else None
    if pattern == NAME_PATTERN:
        return f"invalid name {got!r}: {NAME_RULE}"
    if pattern == DEPLOYMENT_PATTERN:
        return (
            f"invalid deployment name {got!r}: use lowercase letters, digits and '-', "
            "starting with a letter or digit, at most 63 characters"
        )
    if kind == "extra_forbidden":
        allowed = _fields_at(root, err["loc"][:-1])
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return f"unknown key {err['loc'][-1]!r}{hint}"
    if kind == "missing":
        return "required, but missing"
    msg: str = err["msg"]
    if msg.startswith("Value error, "):
        return msg.removeprefix("Value error, ")
    if msg.startswith("Assertion failed, "):
        return msg.removeprefix("Assertion failed, ")
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping (key: value), got {_kind(got)}"
    if kind == "list_type":
        return f"expected a list, got {_kind(got)}"
    if kind == "too_short":
        return "needs at least one entry"
    msg = msg.replace("Input should be", "expected").replace("Input should have", "expected")
    return f"{msg}; got {got!r}" if not isinstance(got, dict | list) else msg


def _fields_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the model that a loc points into (best effort)."""
    current: Any = root
    for elem in loc:
        model = _as_model(current)
        if model is not None and isinstance(elem, str) and elem in model.model_fields:
            current = model.model_fields[elem].annotation
            continue
        args = [a for a in typing.get_args(_strip(current)) if a is not type(None)]
        origin = typing.get_origin(_strip(current))
        if origin in (dict, list) and args:
            current = args[-1]
    model = _as_model(current)
    return sorted(model.model_fields) if model else []


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _as_model(tp: Any) -> type[BaseModel] | None:
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            found = _as_model(arg)
            if found:
                return found
    return None


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{value!r}"
