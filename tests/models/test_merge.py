"""JSON merge patch (RFC 7396) properties: how logical and physical models combine."""

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from reconciler.models.merge import locate, merge_patch

scalars = st.one_of(st.integers(), st.text(max_size=5), st.booleans())
keys = st.sampled_from(["a", "b", "c", "d"])
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=10,
)
documents = st.dictionaries(keys, values, max_size=4)
patches = st.recursive(
    st.one_of(scalars, st.none()),
    lambda inner: st.dictionaries(keys, inner, max_size=3),
    max_leaves=10,
)


def test_rfc7396_examples() -> None:
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": ["b"]}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "c"}, {"a": ["b"]}) == {"a": ["b"]}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}


@given(documents)
def test_merging_a_document_into_nothing_gives_it_back(doc: dict[str, Any]) -> None:
    assert merge_patch({}, doc) == doc


@given(documents, patches)
def test_merge_is_idempotent(doc: dict[str, Any], patch: Any) -> None:
    once = merge_patch(doc, patch)
    assert merge_patch(once, patch) == once


@given(documents, documents)
def test_later_file_wins_on_every_key_it_sets(a: dict[str, Any], b: dict[str, Any]) -> None:
    merged = merge_patch(a, b)
    for key, value in b.items():
        if not isinstance(value, dict):
            assert merged[key] == value


@given(documents, patches)
def test_inputs_are_not_modified(doc: dict[str, Any], patch: Any) -> None:
    before = repr(doc), repr(patch)
    merge_patch(doc, patch)
    assert (repr(doc), repr(patch)) == before


def test_locate_falls_back_to_the_nearest_marked_ancestor() -> None:
    marks = {("machines",): ("a.yaml", 1), ("machines", "m1"): ("b.yaml", 4)}
    assert locate(marks, ("machines", "m1", "deployment", "targetEnv")) == ("b.yaml", 4)
    assert locate(marks, ("services",)) is None
