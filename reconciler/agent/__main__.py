"""`python3 -m reconciler.agent COMMAND < request.json` (the archive has its own
`__main__.py` that does the same)."""

from __future__ import annotations

import sys

from .protocol import main

sys.exit(main())
