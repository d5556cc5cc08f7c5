"""The local store cache: built packages as immutable, content-hashed store paths."""
