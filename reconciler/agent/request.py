"""Reading a request: its fields, the instance it describes, and the two errors every
command may raise (a bad request exits 2, a failed operation 1)."""

from __future__ import annotations

import os
import re
from typing import Any, NoReturn


class BadRequest(Exception):
    """The request is malformed: exit 2."""


class Failure(Exception):
    """The operation failed: exit 1, with the log tail and any extra fields."""

    def __init__(self, message: str, log: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.log = log
        self.extra = extra


def bad(message: str) -> NoReturn:
    raise BadRequest(message)


def req_obj(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        bad(f"{key!r} must be an object")
    return value


def req_str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        bad(f"{key!r} must be a non-empty string")
    return value


def opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        bad(f"{key!r} must be a string or null")
    return value


def opt_int(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        bad(f"{key!r} must be an integer or null")
    return value


def seconds(value: Any, key: str, default: float) -> float:
    """A duration: a number of seconds, or a string like "10s", "500ms", "2m"."""
    if value is None:
        return default
    if isinstance(value, bool):
        bad(f"{key!r} must be a duration")
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", value)
        if not m:
            bad(f"{key!r} must be a duration, not {value!r}")
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
        result = float(m.group(1)) * scale
    else:
        bad(f"{key!r} must be a duration")
    if result < 0:
        bad(f"{key!r} must not be negative")
    return result


def name_field(obj: dict[str, Any], key: str) -> str:
    """A name used as one path component (deployment, service)."""
    value = req_str(obj, key)
    if "/" in value or "\0" in value or value in (".", ".."):
        bad(f"{key!r} is not a valid name: {value!r}")
    return value


def abs_path(obj: dict[str, Any], key: str) -> str:
    value = req_str(obj, key)
    if not os.path.isabs(value) or "\0" in value:
        bad(f"{key!r} must be an absolute path")
    return os.path.normpath(value)


class Health:
    def __init__(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            bad("'health' must be an object or null")
        self.http = opt_str(raw, "http")
        tcp = raw.get("tcp")
        if tcp is not None and not isinstance(tcp, bool):
            bad("'health.tcp' must be a boolean or null")
        self.tcp = bool(tcp)
        self.command = opt_str(raw, "command")
        self.timeout = seconds(raw.get("timeout"), "health.timeout", 10.0)
        if self.http is not None and not self.http.startswith("/"):
            self.http = "/" + self.http

    def empty(self) -> bool:
        return self.http is None and not self.tcp and self.command is None

    def needs_port(self) -> bool:
        return self.http is not None or self.tcp


class Instance:
    """An instance as the requests describe it. `full`: for activate (package required);
    otherwise the package is optional. Its type is checked against the table in
    `kinds`, which also checks what each type needs."""

    def __init__(self, raw: Any, full: bool) -> None:
        if not isinstance(raw, dict):
            bad("an instance must be an object")
        self.raw: dict[str, Any] = raw
        self.key = req_str(raw, "key")
        self.service = name_field(raw, "service")
        self.type = req_str(raw, "type")
        self.package: str | None = abs_path(raw, "package") if full or raw.get("package") else None
        self.command = opt_str(raw, "command")
        self.user = opt_str(raw, "user") or None
        env = raw.get("env")
        if env is None:
            env = {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            bad("'env' must map strings to strings")
        self.env: dict[str, str] = env
        health = None if raw.get("health") is None else Health(raw.get("health"))
        # a health object naming no check is no health check
        self.health = health if health is not None and not health.empty() else None
        self.host = opt_str(raw, "host") or "127.0.0.1"
        self.port = opt_int(raw, "port")
        self.identity = opt_str(raw, "identity")
        if self.health is not None and self.health.needs_port() and self.port is None:
            bad(f"{self.key}: an http or tcp health check needs a port")
