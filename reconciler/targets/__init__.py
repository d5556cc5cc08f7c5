"""Target environments: one module each (local, ssh, …), the same few operations."""
