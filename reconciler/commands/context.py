"""What every command checks of the global options before it starts."""

from __future__ import annotations

from reconciler.errors import UserError
from reconciler.options import Options


def check_format(opts: Options, allowed: tuple[str, ...]) -> None:
    if opts.format not in allowed:
        raise UserError(f"--format {opts.format}: this command writes {', '.join(allowed)}")
