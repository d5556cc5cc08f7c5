"""YAML with line marks and duplicate-key rejection, on PyYAML's C parser.

The C parser composes the node tree quickly; we construct plain Python values from it
ourselves so that every mapping key and sequence item gets its line recorded under its
path, and a duplicate key is an error instead of silently overwriting. What one
deployment's files may expand to is bounded together (a `Budget`), so an alias bomb
split over several files is refused as one would be in a single file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from reconciler.errors import Problem

Path = tuple[str | int, ...]
Marks = dict[Path, tuple[str, int]]

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_VALUES = 2_000_000  # after expanding aliases; 10,000 services take about 300,000
MAX_ALIASED = 200_000  # values reached through aliases: anchors share small pieces
MAX_DEPTH = 64  # a model is about 6 levels deep; free-form properties get the rest
_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_MERGE = "tag:yaml.org,2002:merge"


@dataclass
class Budget:
    """How many values the files of one deployment may still expand to, together."""

    values: int = MAX_VALUES
    aliased: int = MAX_ALIASED

    @property
    def spent(self) -> bool:
        return self.values < 0 or self.aliased < 0


class _Refused(Exception):
    def __init__(self, path: Path, line: int, message: str) -> None:
        self.path, self.line, self.message = path, line, message


def load_yaml(
    text: bytes | str, file: str, budget: Budget | None = None
) -> tuple[Any, Marks, list[Problem]]:
    """Parse one YAML document; return (data, marks, problems).

    marks maps each path (keys and list indexes) to (file, 1-based line).
    On any problem the data is None.
    """
    loader = _Loader(text)
    marks: Marks = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return None, marks, []
        return _Builder(loader, file, marks, budget or Budget()).build(node), marks, []
    except yaml.reader.ReaderError as e:
        raw = text if isinstance(text, bytes) else text.encode()
        line = raw[: e.position].count(b"\n") + 1
        return None, marks, [Problem(file, line, "", f"not UTF-8 text: {e.reason}")]
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        what = " ".join(s for s in (e.context, e.problem) if s)
        return None, marks, [Problem(file, line, "", f"invalid YAML: {what}")]
    except yaml.YAMLError as e:
        return None, marks, [Problem(file, 0, "", f"invalid YAML: {e}")]
    except RecursionError:  # the C composer's own nesting, before ours is checked
        return None, {}, [Problem(file, 0, "", _too_deep())]
    except _Refused as r:
        key = ".".join(str(p) for p in r.path)
        return None, {}, [Problem(file, r.line, key, r.message)]
    finally:
        loader.dispose()


def _too_deep() -> str:
    return f"nested more than {MAX_DEPTH} levels deep; a model needs far fewer"


class _Builder:
    """Plain values from a composed node tree, marking every key and item."""

    def __init__(self, loader: yaml.SafeLoader, file: str, marks: Marks, budget: Budget) -> None:
        self.loader, self.file, self.marks, self.budget = loader, file, marks, budget
        self.seen: set[int] = set()  # nodes built once: meeting one again is an alias

    def build(self, node: yaml.Node, path: Path = (), aliased: bool = False) -> Any:
        line = node.start_mark.line + 1
        if len(path) > MAX_DEPTH:
            raise _Refused(path[:1], self.marks.get(path, (self.file, line))[1], _too_deep())
        aliased = aliased or id(node) in self.seen
        self.seen.add(id(node))
        self._spend(path, line, aliased)
        if isinstance(node, yaml.ScalarNode):
            if "\0" in node.value:
                raise _Refused(path, line, _NUL)
            return node.value if node.tag == _STR else self.loader.construct_object(node)
        if isinstance(node, yaml.SequenceNode | yaml.MappingNode) and node.tag not in (_SEQ, _MAP):
            raise yaml.constructor.ConstructorError(
                None, None, f"unknown tag {node.tag}; model files use plain YAML", node.start_mark
            )
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, child in enumerate(node.value):
                self.marks[(*path, i)] = (self.file, child.start_mark.line + 1)
                items.append(self.build(child, (*path, i), aliased))
            return items
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, aliased)
        return self.loader.construct_object(node)

    def _mapping(self, node: yaml.MappingNode, path: Path, aliased: bool) -> dict[str, Any]:
        if any(k.tag == _MERGE for k, _ in node.value):
            self.loader.flatten_mapping(node)
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", knode.start_mark
                )
            key: str = knode.value  # keys stay as written: `no:` is "no", not False
            sub = (*path, key)
            line = knode.start_mark.line + 1
            if "\0" in key:
                raise _Refused(path, line, "a key " + _NUL)
            if key in out:
                first = self.marks[sub][1]
                msg = f"duplicate key (first defined on line {first}); keep only one of them"
                raise _Refused(sub, line, msg)
            self.marks[sub] = (self.file, line)
            out[key] = self.build(vnode, sub, aliased)
        return out

    def _spend(self, path: Path, line: int, aliased: bool) -> None:
        self.budget.values -= 1
        if self.budget.values < 0:
            msg = (
                f"the deployment's model files hold more than {MAX_VALUES:,} values once "
                "aliases are expanded; write them out or split the deployment"
            )
            raise _Refused((), line, msg)
        if aliased:
            self.budget.aliased -= 1
            if self.budget.aliased < 0:
                msg = (
                    f"aliases expand to more than {MAX_ALIASED:,} values in the deployment's "
                    "model files; write the repeated parts out"
                )
                raise _Refused(path[:1], line, msg)


_NUL = (
    "contains a NUL character, which no command, path or environment variable can hold; remove it"
)
