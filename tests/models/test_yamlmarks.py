from reconciler.models.yamlmarks import Budget, load_yaml


def test_marks_record_the_line_of_every_key_and_item() -> None:
    data, marks, problems = load_yaml("a:\n  b: 1\n  c:\n    - x\n    - y\n", "f.yaml")
    assert problems == []
    assert data == {"a": {"b": 1, "c": ["x", "y"]}}
    assert marks[("a", "b")] == ("f.yaml", 2)
    assert marks[("a", "c", 1)] == ("f.yaml", 5)


def test_duplicate_key_is_an_error_naming_both_lines() -> None:
    data, _, problems = load_yaml("services:\n  web: {}\n  web: {}\n", "s.yaml")
    assert data is None
    assert [str(p) for p in problems] == [
        "s.yaml:3: services.web: duplicate key (first defined on line 2); keep only one of them"
    ]


def test_syntax_error_names_file_and_line() -> None:
    _, _, problems = load_yaml("a: [1, 2\nb: 3\n", "bad.yaml")
    assert len(problems) == 1
    assert problems[0].file == "bad.yaml"
    assert problems[0].line == 2
    assert problems[0].message.startswith("invalid YAML:")


def test_keys_stay_as_written_but_values_are_typed() -> None:
    data, _, _ = load_yaml("no: yes\n8080: on\n", "f.yaml")
    assert data == {"no": True, "8080": True}


def test_merge_keys_and_anchors_work() -> None:
    data, _, problems = load_yaml("x: &base {p: 1}\ny: {<<: *base, q: 2}\n", "f.yaml")
    assert problems == []
    assert data["y"] == {"p": 1, "q": 2}


def test_empty_document_is_none_without_problems() -> None:
    assert load_yaml("", "f.yaml")[0] is None
    assert load_yaml("# just a comment\n", "f.yaml")[2] == []


def test_alias_expansion_is_capped() -> None:
    bomb = "a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\nb: &b [*a, *a, *a, *a, *a]\nc: [*b, *b, *b]\n"
    data, _, problems = load_yaml(bomb, "f.yaml", Budget(values=100))
    assert data is None
    assert "once aliases are expanded" in problems[0].message
