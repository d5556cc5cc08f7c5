"""Model documents for property tests: a valid one, random shapes over the model's own key
vocabulary, and the valid one with one value anywhere replaced by a random one (the shape
of most real mistakes)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel

from reconciler.models import schema

RECONCILER_YAML = "deployments:\n  app:\n    models: [models.yaml]\n"
VALID: dict[str, Any] = {
    "machines": {
        "m1": {
            "deployment": {"targetEnv": "local"},
            "containers": {"process": {}},
            "properties": {"zone": "eu"},
            "capacity": {"mem": 4096},
        },
        "m2": {"deployment": {"targetEnv": "ssh", "ssh": {"host": "h"}}},
    },
    "packages": {"app": {"src": "pkgs/app", "deps": ["db"]}, "db": {"src": "pkgs/db"}},
    "services": {
        "db": {"package": "db", "type": "sqlite-database"},
        "app": {
            "package": "app",
            "command": "bin/app",
            "port": "auto",
            "dependsOn": ["db"],
            "env": {"LOG": "info"},
            "healthCheck": {"tcp": True, "timeout": "5s"},
            "rollout": {"maxUnavailable": "25%", "minReady": "5s"},
            "requires": {"mem": 512},
            "moveState": True,
        },
        "web": {"package": "app", "command": "bin/web", "rollout": {"maxUnavailable": 1}},
    },
    "distribution": {
        "db": ["m1"],
        "app": [{"target": "m1", "container": "process"}],
        "web": {"replicas": 2, "select": {"zone": "eu"}, "spread": "zone", "container": "process"},
    },
}


def _field_names() -> list[str]:
    models = [v for v in vars(schema).values() if isinstance(v, type) and issubclass(v, BaseModel)]
    return sorted({name for m in models for name in m.model_fields})


KEYS = [*_field_names(), "m1", "m2", "app", "db", "ghost", "process", "Bad Name", "1"]
WORDS = ["auto", "30s", "local", "ssh", "process", "sqlite-database", "m1", "app", "db"]
WORDS += ["bin/app", "pkgs/app", "/etc", "..", "", "0400", "[8000, 8999]", "~"]
WORDS += ["25%", "100%", "0%", "101%", "latest-snapshot", "zone", "eu"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 70_000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(WORDS),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=6),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=12,
)
TOP = ["description", "machines", "packages", "services", "distribution", "colour"]


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _paths(v, (*prefix, i))


def _replace(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[path[0]] = _replace(data[path[0]], path[1:], value)
    return copy


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        data = data[p]
    return data


def _add(data: Any, path: tuple[Any, ...], key: str, value: Any) -> Any:
    return _replace(data, path, {**_get(data, path), key: value})


mutated = st.builds(_replace, st.just(VALID), st.sampled_from(list(_paths(VALID))), values)
shapes = st.dictionaries(st.sampled_from(TOP), values, max_size=5)
documents = st.one_of(mutated, shapes, values)

# one scalar of the valid model changed, or one key added beside it: mostly still valid
# in structure, which is what a schema's acceptance is tested on
_LEAVES = [p for p in _paths(VALID) if p and not isinstance(_get(VALID, p), dict | list)]
_MAPPINGS = [p for p in _paths(VALID) if isinstance(_get(VALID, p), dict)]
tweaked = st.one_of(
    st.builds(_replace, st.just(VALID), st.sampled_from(_LEAVES), scalars),
    st.builds(_add, st.just(VALID), st.sampled_from(_MAPPINGS), st.sampled_from(KEYS), scalars),
)
