"""A damaged, emptied, immutable or read-only state DB (issue 13 item 10), through the real
CLI on a real deployment: every command that cannot use the file says so in one line that
names it and says what to do (restore a backup, or `reconciler reconstruct`), exits 1,
prints no traceback and changes nothing; commands that only read work on a file they
cannot write."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import commit, make_repo, run_cli

CONFIG = "deployments:\n  app:\n    models: [models.yaml]\n"
MODELS = """\
machines:
  m1:
    deployment:
      targetEnv: local
packages:
  tool: {src: pkgs/tool}
services:
  tool: {package: tool, type: package}
distribution:
  tool: [m1]
"""
READERS = (("status",), ("history",), ("plan",))
COMMANDS = (*READERS, ("apply", "--yes"))


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[Path]:
    """Generation 1 applied to a local machine, and a newer commit not applied yet, so
    that an apply would change something."""
    files = {"reconciler.yaml": CONFIG, "models.yaml": MODELS, "pkgs/tool/README": "one\n"}
    files[".gitignore"] = ".reconciler/\n"
    repo = make_repo(tmp_path / "models", files)
    done = run_cli("apply", "--yes", cwd=repo, timeout=120)
    assert done.returncode == 0, done.stderr
    commit(repo, {"pkgs/tool/README": "two\n"}, "a change to apply")
    yield repo
    for path in (repo / ".reconciler", repo / ".reconciler" / "state.db"):
        chattr(path, "-i")  # let pytest remove what a test made immutable


def state_of(repo: Path) -> Path:
    return repo / ".reconciler" / "state.db"


def snapshot(repo: Path) -> dict[str, str]:
    """Every file under .reconciler (the state DB, the store, the local machine) by hash;
    not SQLite's own -shm index, nor a -wal file that holds nothing."""
    root = repo / ".reconciler"
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and not path.name.endswith((".lock", "-shm"))
        and not (path.name.endswith("-wal") and path.stat().st_size == 0)
    }


def refused(repo: Path, *args: str) -> str:
    """The one line a command that cannot go on prints, with exit code 1."""
    done = run_cli(*args, cwd=repo, timeout=120)
    assert done.returncode == 1, (args, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, (args, done.stderr)
    return errors[0]


def corrupt_pages(path: Path) -> None:
    with path.open("r+b") as f:  # past the header, into the tables' pages
        f.seek(3 * 4096)
        f.write(b"\xde\xad\xbe\xef" * 1024)


def corrupt_header(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(b"not a database at all" * 5)


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 3)


@pytest.mark.parametrize("damage", [corrupt_pages, corrupt_header, truncate])
def test_a_damaged_state_db_is_one_line_saying_what_to_do(
    deployed: Path, damage: Callable[[Path], None]
) -> None:
    damage(state_of(deployed))
    before = snapshot(deployed)
    for args in COMMANDS:
        line = refused(deployed, *args)
        assert line.startswith(f"error: {Path('.reconciler', 'state.db')}: "), line
        assert "the state DB is damaged" in line, line
        assert "restore a backup (state.db.vN.bak, if there is one)" in line, line
        assert "`reconciler reconstruct`" in line, line
    assert snapshot(deployed) == before, "nothing changed: not the file, not the machine"


def test_an_empty_state_db_is_refused_not_started_afresh(deployed: Path) -> None:
    """A zero-length file is no new state: the history and pinned host keys it held are
    gone, and an apply must not silently record generation 1 again."""
    state_of(deployed).write_bytes(b"")
    before = snapshot(deployed)
    for args in COMMANDS:
        line = refused(deployed, *args)
        assert "the state DB is empty (0 bytes)" in line, line
        assert "history and pinned host keys are gone" in line, line
        assert "`reconciler reconstruct`" in line, line
    assert snapshot(deployed) == before
    assert state_of(deployed).stat().st_size == 0
    # A backup beside it is named.
    backup = state_of(deployed).with_name("state.db.v2.bak")
    backup.write_bytes(b"a backup")
    assert "restore a backup (state.db.v2.bak)" in refused(deployed, "plan")


def chattr(path: Path, flag: str) -> bool:
    """chattr +i/-i: False where the file system or our privileges do not allow it."""
    try:
        done = subprocess.run(["chattr", flag, str(path)], capture_output=True, timeout=30)
    except FileNotFoundError:
        return False
    return done.returncode == 0


def immutable(path: Path) -> None:
    if not chattr(path, "+i"):
        pytest.skip("chattr +i is not possible here (needs root and ext4/xfs/btrfs)")


def read_only_folder(folder: Path) -> None:
    """As root, permissions do not stop writes: an immutable folder does."""
    if os.geteuid() == 0:
        immutable(folder)
    else:
        folder.chmod(0o500)


def writable_folder(folder: Path) -> None:
    if os.geteuid() == 0:
        chattr(folder, "-i")
    else:
        folder.chmod(0o700)


def readers_still_work(repo: Path) -> None:
    for args in READERS:
        done = run_cli(*args, cwd=repo, timeout=120)
        assert done.returncode == 0, (args, done.stderr)
    history = run_cli("history", cwd=repo).stdout
    assert "initial models" in history


def test_an_immutable_state_db_is_readable_and_apply_says_why_it_cannot_write(
    deployed: Path,
) -> None:
    immutable(state_of(deployed))
    before = snapshot(deployed)
    readers_still_work(deployed)
    line = refused(deployed, "apply", "--yes")
    assert line == (
        f"error: {Path('.reconciler', 'state.db')}: cannot write the state DB: the file is "
        "read-only or immutable (see ls -l and lsattr); make it writable for this user "
        "(status, history and plan need only read it)"
    )
    assert snapshot(deployed) == before


def test_a_read_only_folder_keeps_readers_working_and_writers_say_why(deployed: Path) -> None:
    folder = deployed / ".reconciler"
    assert not list(folder.glob("state.db-*")), "closed cleanly: no -wal or -shm files"
    before = snapshot(deployed)
    read_only_folder(folder)
    try:
        readers_still_work(deployed)
        line = refused(deployed, "apply", "--yes")
        assert f"cannot write the state DB: its folder {Path('.reconciler')} is read-only" in line
        line = refused(deployed, "gc")
        assert "cannot take the gc's lock" in line and "writable for this user" in line
    finally:
        writable_folder(folder)
    assert snapshot(deployed) == before
