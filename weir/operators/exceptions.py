"""Errors a job author can act on: each names the bad value and what was expected."""

from __future__ import annotations

from typing import Any


class JobDefinitionError(ValueError):
    """The job file describes a dataflow Weir cannot run (bad argument, bad wiring)."""


class RecordError(Exception):
    """One record could not be processed; it goes to the dead-letter topic.

    ``reason`` is the short label used in ``weir_records_failed_total{reason}``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class StateRefused(RecordError):
    """A record whose keyed state cannot be stored (the serde cannot encode it, or it
    would outgrow what the changelog accepts): the record goes to the dead-letter topic
    and changes nothing."""

    def __init__(self, operator: str, key: Any, problem: str) -> None:
        super().__init__(
            "state",
            f"operator {operator!r} cannot store the state of key {key!r}: {problem};"
            " the record changed nothing",
        )
