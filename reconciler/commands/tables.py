"""Text output shared by the commands: tables, times, commits."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on a terminal; plain aligned columns otherwise (pipes, files, CI)."""
    if sys.stdout.isatty():
        from rich import box
        from rich.console import Console
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for h in headers:
            table.add_column(h, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console(highlight=False).print(table)
        return
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())


def when(stamp: str | None) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM:SS UTC'; '-' when unknown."""
    if not stamp:
        return "-"
    try:
        t = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def short_sha(sha: str | None) -> str:
    return sha[:12] if sha else "-"


def commit_text(sha: str | None, subject: str | None) -> str:
    if not sha:
        return "no commit"
    return f"commit {sha[:12]}" + (f' "{subject}"' if subject else "")


def dash(value: object) -> str:
    return "-" if value is None else str(value)


def yes_no(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"
