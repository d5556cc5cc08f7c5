"""YAML with line marks and duplicate-key rejection, on PyYAML's C parser.

The C parser composes the node tree quickly; we construct plain Python values from it
ourselves so that every mapping key and sequence item gets its line recorded under its
path, and a duplicate key is an error instead of silently overwriting.
"""

from __future__ import annotations

from typing import Any

import yaml

from reconciler.errors import Problem

Path = tuple[str | int, ...]
Marks = dict[Path, tuple[str, int]]

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAX_NODES = 2_000_000  # after expanding aliases; 10,000 services take about 300,000
_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_MERGE = "tag:yaml.org,2002:merge"


class _TooLarge(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


class _Duplicate(Exception):
    def __init__(self, path: Path, line: int, first: int) -> None:
        self.path, self.line, self.first = path, line, first


def load_yaml(text: bytes | str, file: str) -> tuple[Any, Marks, list[Problem]]:
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
        return _build(loader, node, (), file, marks, [0]), marks, []
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
    except _Duplicate as d:
        key = ".".join(str(p) for p in d.path)
        msg = f"duplicate key (first defined on line {d.first}); keep only one of them"
        return None, marks, [Problem(file, d.line, key, msg)]
    except _TooLarge as t:
        msg = f"more than {_MAX_NODES:,} values once aliases are expanded; write them out"
        return None, {}, [Problem(file, t.line, "", msg)]
    finally:
        loader.dispose()


def _build(
    loader: yaml.SafeLoader, node: yaml.Node, path: Path, file: str, marks: Marks, count: list[int]
) -> Any:
    count[0] += 1
    if count[0] > _MAX_NODES:
        raise _TooLarge(node.start_mark.line + 1)
    if isinstance(node, yaml.ScalarNode):
        return node.value if node.tag == _STR else loader.construct_object(node)
    if isinstance(node, yaml.SequenceNode | yaml.MappingNode) and node.tag not in (_SEQ, _MAP):
        raise yaml.constructor.ConstructorError(
            None, None, f"unknown tag {node.tag}; model files use plain YAML", node.start_mark
        )
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, child in enumerate(node.value):
            marks[(*path, i)] = (file, child.start_mark.line + 1)
            items.append(_build(loader, child, (*path, i), file, marks, count))
        return items
    if isinstance(node, yaml.MappingNode):
        if any(k.tag == _MERGE for k, _ in node.value):
            loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", knode.start_mark
                )
            key: str = knode.value  # keys stay as written: `no:` is "no", not False
            sub = (*path, key)
            line = knode.start_mark.line + 1
            if key in out:
                raise _Duplicate(sub, line, marks[sub][1])
            marks[sub] = (file, line)
            out[key] = _build(loader, vnode, sub, file, marks, count)
        return out
    return loader.construct_object(node)
