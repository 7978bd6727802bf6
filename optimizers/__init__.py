"""Optimizers with built-in pruning, and the registry that builds them from a RunSpec."""
