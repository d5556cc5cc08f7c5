"""The SQLite record: what was deployed where, generations, attempts, and the journal."""
