"""Building packages into the local store cache (SPEC §2.4; §3 step 2).

Each package is built once per store hash, in a scratch folder with `$src` (its source
tree exported from Git at the commit) and `$out`; the output is hashed, made read-only
and renamed into place, so a path that exists is complete. Independent builds run in
parallel, up to the number of cores.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from reconciler.desired.state import StorePackage
from reconciler.errors import UserError
from reconciler.store.content import hash_tree, make_immutable, remove_tree
from reconciler.store.local import LocalStore, PathInfo

_TAIL_LINES = 20


class BuildError(UserError):
    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        parts = [f"build of package {name} failed:\n{detail}" for name, detail in failures.items()]
        super().__init__("\n".join(parts))


async def build_missing(
    packages: Iterable[StorePackage], git_dir: str, store: LocalStore, jobs: int | None = None
) -> tuple[dict[str, PathInfo], list[str]]:
    """Build every package whose path is not in the store yet.

    Returns (info of every path, names of the packages built now). Raises BuildError
    naming each failed package with the tail of its output; nothing partial remains.
    """
    limit = asyncio.Semaphore(jobs or os.cpu_count() or 1)
    infos: dict[str, PathInfo] = {}
    todo = []
    for pkg in packages:
        found = store.info(pkg.path)
        if found:
            infos[pkg.path] = found
        else:
            todo.append(pkg)

    async def one(pkg: StorePackage) -> PathInfo:
        async with limit:
            return await build_one(pkg, git_dir, store)

    results = await asyncio.gather(*(one(p) for p in todo), return_exceptions=True)
    failures: dict[str, str] = {}
    for pkg, result in zip(todo, results, strict=True):
        if isinstance(result, _Failed):
            failures[pkg.name] = str(result)
        elif isinstance(result, BaseException):
            raise result
        else:
            infos[pkg.path] = result
    if failures:
        raise BuildError(failures)
    return infos, [p.name for p in todo]


class _Failed(Exception):
    pass


async def build_one(pkg: StorePackage, git_dir: str, store: LocalStore) -> PathInfo:
    work = Path(tempfile.mkdtemp(prefix=f"build-{pkg.path}-", dir=store.scratch()))
    try:
        src, out, log = work / "src", work / "out", work / "build.log"
        src.mkdir()
        if pkg.src_tree:
            await _export(git_dir, pkg.src_tree, src, log)
        if pkg.build is None:
            src.rename(out)
        else:
            out.mkdir()
            await _run_build(pkg.build, src, out, work, log)
            if not out.is_dir():
                raise _Failed("the build did not leave a folder at $out")
        content = await asyncio.to_thread(hash_tree, out, str(out).encode())
        if content.embeds:
            listed = ", ".join(content.embeds[:5])
            raise _Failed(
                f"the output embeds its build-time $out path (in {listed}); outputs must be "
                "relocatable: find the package at run time from $RECONCILER_PACKAGE"
            )
        await asyncio.to_thread(make_immutable, out)
        info = PathInfo(pkg.path, content.hash, content.size, content.files)
        return install(store, out, info)
    finally:
        await asyncio.to_thread(remove_tree, work)


def install(store: LocalStore, out: Path, info: PathInfo) -> PathInfo:
    """Rename the output into place, then write its meta: the meta always describes the
    files that are there. A concurrent build of the same hash may have won: keep its."""
    final = store.dir(info.path)
    try:
        out.rename(final)
    except OSError:
        won = store.info(info.path)
        if won is not None:
            return won
        remove_tree(final)  # a path without meta: an install interrupted before its meta
        out.rename(final)
    store.write_meta(info)
    return info


async def _export(git_dir: str, tree: str, dest: Path, log: Path) -> None:
    script = 'git --git-dir="$1" archive --format=tar "$2" | tar -x -C "$3"'
    rc = await _sh(script, ["sh", git_dir, tree, str(dest)], env=None, cwd=dest, log=log)
    if rc != 0:
        raise _Failed(f"could not export its source tree {tree}:\n{_tail(log)}")


async def _run_build(command: str, src: Path, out: Path, work: Path, log: Path) -> None:
    home = work / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(home),
        "LANG": "C.UTF-8",
        "src": str(src),
        "out": str(out),
    }
    rc = await _sh(command, [], env=env, cwd=src, log=log)
    if rc != 0:
        raise _Failed(
            f"`{command}` exited with status {rc}; last lines of its output:\n{_tail(log)}"
        )


async def _sh(
    script: str, args: list[str], env: dict[str, str] | None, cwd: Path, log: Path
) -> int:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            script,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
        return await proc.wait()


def _tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "  (no output)"
    return "\n".join(f"  | {line}" for line in lines[-_TAIL_LINES:]) or "  (no output)"
