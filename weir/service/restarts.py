"""Restart strategies (Flink's) for unexpected errors in a slot.

A slot that raises something other than a bad record (those go to the
dead-letter topic) restarts the job in-process from the last checkpoint:
``fixed-delay`` waits ``restart_delay_ms`` each time, ``exponential-delay``
doubles it per restart up to ``MAX_DELAY_S``, ``none`` never restarts. After
``restart_attempts`` restarts the worker gives up with the cause.
"""

from __future__ import annotations

import logging

from weir.service.config import WorkerConfig
from weir.service.exceptions import WorkerFailed
from weir.service.metrics import Metrics

log = logging.getLogger(__name__)

MAX_DELAY_S = 60.0  # well within max.poll.interval.ms: the wait never costs the group


class RestartStrategy:
    """Counts restarts and says how long to wait before the next one."""

    def __init__(self, config: WorkerConfig, metrics: Metrics) -> None:
        # The series exists from the start at 0, so that Prometheus' increase() counts
        # the first restart too (a restart-loop alert reads it).
        self.counter = metrics.restarts.labels(metrics.job)
        self.strategy = config.restart_strategy
        self.attempts = config.restart_attempts
        self.delay_s = config.restart_delay_ms / 1000
        self.restarts = 0

    def next_delay(self, cause: str, exc: BaseException) -> float:
        """The delay before restart number ``restarts + 1``; raises `WorkerFailed` once
        the strategy allows no more."""
        if self.strategy == "none" or self.restarts >= self.attempts:
            raise WorkerFailed(
                f"slot failed after {self.restarts} restart(s), giving up: {cause}"
            ) from exc
        delay = self.delay_s
        if self.strategy == "exponential-delay":
            delay = min(MAX_DELAY_S, delay * 2**self.restarts)
        self.restarts += 1
        self.counter.inc()
        log.warning(
            "slot failed (%s); restart %d of %d from the last checkpoint in %.1fs",
            cause,
            self.restarts,
            self.attempts,
            delay,
        )
        return delay
