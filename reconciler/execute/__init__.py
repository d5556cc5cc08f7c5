"""Running a plan: provision → build → transfer → lock → transition → record."""
