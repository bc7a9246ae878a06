"""Errors of the state layer, each naming what was expected and what was found."""

from __future__ import annotations


class StateError(Exception):
    """Local state cannot be used as it is."""


class StateDirectoryLocked(StateError):
    """Another live process holds the state directory (same --worker-id twice)."""
