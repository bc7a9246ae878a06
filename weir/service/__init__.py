"""Weir's worker runtime: CLI, config, worker, slots, checkpointing, local tooling."""
