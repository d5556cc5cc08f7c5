"""Content hashes of store paths, and the normalisation that makes them reproducible."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Content:
    hash: str  # "sha256:<hex>"
    size: int  # bytes of file contents
    files: int
    embeds: tuple[str, ...]  # files that contain the needle (e.g. the build's $out)


def hash_tree(root: Path, needle: bytes | None = None) -> Content:
    """SHA-256 over every entry's relative path, type, executable bit and content, in
    name order: equal trees have equal hashes wherever they sit (relocatable)."""
    digest = hashlib.sha256()
    size = files = 0
    embeds: list[str] = []
    for path in sorted(_walk(root)):
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            digest.update(f"l {rel}\0{os.readlink(path)}\0".encode())
        elif stat.S_ISDIR(st.st_mode):
            digest.update(f"d {rel}\0".encode())
        else:
            exe = "x" if st.st_mode & 0o111 else "-"
            digest.update(f"f{exe} {rel}\0{st.st_size}\0".encode())
            found = False
            tail = b""
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    if needle and not found:
                        found = needle in tail + chunk
                        tail = chunk[-len(needle) :]
            if found:
                embeds.append(rel)
            size += st.st_size
            files += 1
    return Content(f"sha256:{digest.hexdigest()}", size, files, tuple(embeds))


def make_immutable(root: Path) -> None:
    """Read-only files (keeping the executable bit) and directories, epoch mtimes: what a
    store path looks like, so a running service cannot change its own package."""
    for path in sorted(_walk(root), reverse=True):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        mode = 0o555 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111 else 0o444
        path.chmod(mode)
        os.utime(path, (1, 1))
    root.chmod(0o555)
    os.utime(root, (1, 1))


def remove_tree(root: Path) -> None:
    """Remove a store path (or a half-built one), read-only or not."""
    if not root.exists() and not root.is_symlink():
        return
    if root.is_symlink() or not root.is_dir():
        root.unlink()
        return
    for path in [root, *_walk(root)]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(root)


def _walk(root: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        out.extend(base / d for d in dirnames)
        out.extend(base / f for f in filenames)
    return out
