"""Files on the target: atomic writes, JSON, log tails, and reading a package's files
without following a link out of the package."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from .request import Failure

LOG_TAIL_LINES = 20


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove(path: str) -> bool:
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write a temporary file next to `path`, fsync it, rename it over `path`."""
    folder, base = os.path.split(path)
    tmp = os.path.join(folder, f".{base}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise
    fsync_dir(folder)


def dumps(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def read_json(path: str) -> Any:
    """The JSON in `path`; None if there is no such file; Failure if unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        return json.loads(data.decode())
    except ValueError as e:
        raise Failure(f"{path}: not valid JSON ({e})") from None


def tail(path: str, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of `path` from byte `offset` on ("" if none)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(offset, size - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def utc_stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def inside(package: str, relative: str) -> str:
    """The real path of `relative` in `package`. A link may point within the package; one
    that leads out of it (say to a file only the controller has, on a `local` machine) is
    a Failure that names the link, never what it points to."""
    root = os.path.realpath(package)
    real = os.path.realpath(os.path.join(package, relative))
    if real != root and not real.startswith(root + os.sep):
        raise Failure(
            f"{relative} is a symbolic link that leads out of its package {package}: "
            "the agent reads only files inside the package"
        )
    return real


def read_package_text(package: str, relative: str) -> str:
    """A text file of a package (see `inside`)."""
    try:
        with open(inside(package, relative), encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise Failure(f"cannot read {relative}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise Failure(f"{relative} is not UTF-8: {e.reason} at byte {e.start}") from None
