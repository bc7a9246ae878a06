"""Errors of the state layer, each naming what was expected and what was found."""

from __future__ import annotations


class StateError(Exception):
    """Local state cannot be used as it is."""


class StateDirectoryLocked(StateError):
    """Another live process holds the state directory (same --worker-id twice)."""


class UnstorableState(ValueError):
    """A state value that cannot be stored: its serde cannot encode it, or its
    changelog record would be larger than the changelog topic accepts. Raised by
    `weir.state.epoch.EpochBuffer.put` at the write, with the state left as it was."""

    def __init__(self, state: str, problem: str) -> None:
        super().__init__(f"state {state!r} cannot store the value: {problem}")
        self.state = state
        self.problem = problem
