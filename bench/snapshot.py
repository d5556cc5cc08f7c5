"""The reconciler a benchmark measures: a copy of reconciler/ as it is now (or at a
commit), which the benchmark's children import, so that edits made during a long run
cannot mix two versions into one table."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import shutil
import subprocess
import tarfile
from pathlib import Path


def package_dir() -> Path:
    spec = importlib.util.find_spec("reconciler")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("reconciler is not installed in this interpreter")
    return Path(next(iter(spec.submodule_search_locations)))


def take_snapshot(into: Path, ref: str | None) -> str:
    """Copy reconciler/ (as it is now, or at commit `ref`) to `into`/reconciler; returns
    what was measured, for the results."""
    src = package_dir()
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    pkg = into / "reconciler"
    if ref is None:
        shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", ref, "--", "."],
            cwd=src,
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(pkg, filter="data")
    digest = hashlib.sha256()
    for path in sorted(pkg.rglob("*.py")):
        digest.update(path.relative_to(pkg).as_posix().encode() + b"\0" + path.read_bytes())

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=src, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = f"{ref or 'HEAD'}^{{commit}}"
    where = f"commit {git('rev-parse', '--short=12', commit)}"
    if ref is None and git("status", "--porcelain", "--", "."):
        where += " + uncommitted changes in reconciler/"
    how = f"snapshot of {ref}" if ref else "snapshot"
    return f"{where} ({how}, sources sha256 {digest.hexdigest()[:12]})"
