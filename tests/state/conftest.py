"""Each state test that takes `location` runs on both backends: a SQLite file and a
database of its own on a real PostgreSQL server (tests/postgres.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.postgres import Database


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a state DB is (or will be): a file path, or a postgresql:// URL."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    db: Database = request.getfixturevalue("postgres_db")
    return db.url
