"""Content hashes: equal trees hash equally wherever they sit; any change shows."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from reconciler.store.content import hash_tree, make_immutable, remove_tree


def tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin/run").write_text("#!/bin/sh\necho hi\n")
    (root / "bin/run").chmod(0o755)
    (root / "share").mkdir()
    (root / "share/data").write_bytes(b"x" * 5000)
    os.symlink("../bin/run", root / "share/link")
    return root


def test_the_same_tree_elsewhere_has_the_same_hash(tmp_path: Path) -> None:
    a, b = tree(tmp_path / "a"), tree(tmp_path / "elsewhere" / "b")
    assert hash_tree(a).hash == hash_tree(b).hash
    assert hash_tree(a).size == len("#!/bin/sh\necho hi\n") + 5000
    assert hash_tree(a).files == 2


def test_content_mode_and_links_all_count(tmp_path: Path) -> None:
    base = hash_tree(tree(tmp_path / "base")).hash
    for n, change in enumerate(
        (
            lambda r: (r / "share/data").write_bytes(b"y" * 5000),
            lambda r: (r / "bin/run").chmod(0o644),
            lambda r: ((r / "share/link").unlink(), os.symlink("elsewhere", r / "share/link")),
            lambda r: (r / "empty").mkdir(),
        )
    ):
        root = tree(tmp_path / f"t{n}")
        change(root)
        assert hash_tree(root).hash != base, n


def test_outputs_that_embed_their_build_path_are_found(tmp_path: Path) -> None:
    root = tree(tmp_path / "out")
    (root / "share/config").write_text(f"home={root}\n")
    assert hash_tree(root, str(root).encode()).embeds == ("share/config",)


def test_immutable_paths_are_read_only_but_removable(tmp_path: Path) -> None:
    root = tree(tmp_path / "p")
    before = hash_tree(root).hash
    make_immutable(root)
    assert hash_tree(root).hash == before  # the executable bit survives
    assert not os.access(root / "share/data", os.W_OK) or os.geteuid() == 0
    assert (root / "share/data").stat().st_mode & 0o222 == 0
    assert (root / "bin/run").stat().st_mode & 0o111
    remove_tree(root)
    assert not root.exists()
    shutil.rmtree(tmp_path)
