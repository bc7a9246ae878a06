"""Leaving: the clean stop, and the abandon after a failure, each bounded in time.

A clean stop (`stop_cleanly`), within ``shutdown_timeout_s`` in all:

1. the last checkpoint: every record fetched so far is processed and committed
   (a failure is logged: those records are simply not committed, and the next
   owner of their partitions reads them again);
2. leave the group (revoking everything drains once more, with nothing left);
3. stop the slots;
4. close the producer;
5. close local state (after the restorer thread, which writes to it).

Each step runs with what is left of the budget; one that overruns raises
`ShutdownOverran` naming it, and nothing more is touched (the step may still be
running).

After a failure (`abandon`), within ``ABANDON_S`` in all — the failure may be a
broker that does not answer: the slots stop, the open transaction is aborted, the
worker leaves the group, local state is closed. What was committed stays
committed; nothing is drained.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException

from weir.service.checkpoint import CheckpointFailed
from weir.service.deadline import CallTimedOut, run_steps
from weir.service.exceptions import ShutdownOverran

if TYPE_CHECKING:
    from weir.service.worker import Worker

log = logging.getLogger(__name__)

SLOT_STOP_S = 5.0  # the most a rollback or an abandon waits for one slot thread
ABANDON_S = 10.0  # the most a failed worker spends on leaving cleanly

Step = tuple[str, Callable[[float], object]]


def stop_cleanly(worker: Worker) -> None:
    """Steps 1-5 of the module doc; sets the worker's state to stopping, then stopped."""
    worker.state = "stopping"
    log.info("stopping: committing the last checkpoint")
    budget = worker.config.shutdown_timeout_s
    steps: list[Step] = [
        ("the last checkpoint", lambda timeout: _last_checkpoint(worker, timeout)),
        ("leaving the group", lambda _: worker.consumer.close()),
        ("stopping the slots", worker.slots.stop),
        ("closing the producer", worker.output.close),
        ("closing local state", lambda timeout: _close_state(worker, timeout)),
    ]
    try:
        run_steps(steps, budget, "shutdown")
    except CallTimedOut as exc:
        raise ShutdownOverran(f"stopping overran shutdown_timeout_s={budget:g}: {exc}") from None
    worker.state = "stopped"
    log.info("stopped")


def abandon(worker: Worker) -> None:
    """After a failure: stop the slots, abort, leave, close state, within ``ABANDON_S``."""
    worker.state = "failed"
    if worker.rebalancer is not None:
        worker.rebalancer.failed = True
    worker.slots.stop(SLOT_STOP_S)
    steps: list[Step] = [
        ("aborting the transaction", lambda _: worker.output.abandon()),
        ("leaving the group", lambda _: _leave(worker)),
        ("closing local state", lambda timeout: _close_state(worker, timeout)),
    ]
    with contextlib.suppress(CallTimedOut):
        run_steps(steps, ABANDON_S, "abandon")


def _close_state(worker: Worker, timeout: float = 10.0) -> None:
    """Stop the restorer, then close the store — unless the restorer is still
    writing to it (it outlived ``timeout``): then the store is left to the process's end."""
    restorer = worker.rebalancer.restorer if worker.rebalancer is not None else None
    if restorer is not None:
        restorer.stop()
        restorer.join(timeout)
    if worker.store is not None and not (restorer and restorer.is_alive()):
        worker.store.close()


def _last_checkpoint(worker: Worker, timeout: float) -> None:
    try:
        worker.coordinator.drain(timeout)
    except CheckpointFailed as exc:
        log.error("the last checkpoint failed (%s); its records are not committed", exc)


def _leave(worker: Worker) -> None:
    with contextlib.suppress(KafkaException, RuntimeError):
        worker.consumer.close()
