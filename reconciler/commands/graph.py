"""`reconciler graph`: DOT of machines, instances and their edges; SVG via `dot`."""

from __future__ import annotations

import shutil
import subprocess
import sys

from reconciler.commands.context import check_format
from reconciler.desired.dot import to_dot
from reconciler.errors import UserError
from reconciler.execute.inputs import compile_with_record, load_one, paused_gc
from reconciler.options import Options


def run(opts: Options, worktree: bool) -> int:
    check_format(opts, ("text", "dot", "svg"))
    with paused_gc():
        loaded, _ = load_one(opts, worktree)
        desired, _ = compile_with_record(opts, loaded)
    dot = to_dot(desired)
    if opts.format != "svg":
        sys.stdout.write(dot)
        return 0
    exe = shutil.which("dot")
    if exe is None:
        raise UserError(
            "--format svg needs Graphviz's `dot` (apt-get install graphviz); "
            "without it, pipe the DOT output elsewhere"
        )
    svg = subprocess.run([exe, "-Tsvg"], input=dot, capture_output=True, text=True, check=True)
    sys.stdout.write(svg.stdout)
    return 0
