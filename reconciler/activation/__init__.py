"""Activation on target machines: the agent shipped to each target and run there."""
