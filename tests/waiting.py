"""Bounded waiting: every wait in the tests polls a condition until it holds or a
deadline passes, and fails saying what it waited for.

A test that waits on a worker also wants to fail at once when the worker dies rather
than at the deadline, so a wait can run a ``check`` (which raises) on every round,
and add a ``detail`` (log tails, what was seen so far) to its failure message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    every: float = 0.2,
    check: Callable[[], object] | None = None,
    detail: Callable[[], str] | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Each round: 1. ``check()``, which raises to end the wait early (a worker exited);
    2. ``predicate()``: a truthy result ends the wait; 3. past ``timeout`` seconds,
    raise AssertionError naming ``what``, followed by ``detail()`` (which brings
    its own separator); 4. sleep ``every`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = detail() if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(every)


def seconds_until(predicate: Callable[[], Any], timeout: float, what: str, **options: Any) -> float:
    """`wait_for` (with the same options), returning how many seconds the wait took."""
    started = time.monotonic()
    wait_for(predicate, timeout, what, **options)
    return time.monotonic() - started
