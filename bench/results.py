"""Writing a benchmark's own `## name` section of RESULTS.md, leaving the others."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, section: str, body: str) -> None:
    """Replace (or append) the section headed `section`, keeping the other benchmarks'."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == section), None)
    if start is None:
        new = [*lines, "", *body.splitlines()] if lines else body.splitlines()
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        tail = ["", *lines[end:]] if end < len(lines) else []
        new = [*lines[:start], *body.splitlines(), *tail]
    path.write_text("\n".join(new).rstrip("\n") + "\n")
