"""Reconciler: a GitOps reconciler for machines and services."""

__version__ = "0.1.0"

# Part of every package's store hash: bump it when the build procedure changes meaning,
# so every store path changes with it.
BUILDER_VERSION = "1"
