"""The one slot's stateless chain run on the fetch thread itself: no hand-off.

A worker with one slot hands every fetched batch to the slot thread, and the two
threads take turns at the GIL for the same records: the fetch thread consumes and
routes, the slot decodes, calls the functions, encodes and produces. When the slot's
chain is stateless and every record enters it at a source (no exchange or union
input, no timers, no state), nothing is gained by the second thread, so the fetch
thread runs the chain itself (measured on Nexmark q0: see `benchmarks/results`).

When it applies (`InlineChain.usable`): one slot whose chain is as above, and the
fetch loop runs on the process's main thread (the interrupt of step 4 reaches only
that thread; a worker run on another thread hands its batches over as before).

For each batch the fetch loop routed (`InlineChain.run`):

1. The fetch thread takes it only while the slot thread waits on an empty inbox
   (`Inbox.idle_and_empty`): nothing is then ahead of the batch, and nothing can be
   queued behind it meanwhile — the fetch thread is the only sender of a slot with
   no exchange — so the two threads never run the chain at once, and barriers,
   releases and watermarks keep their order with the records. A slot thread still
   at an item (a barrier, a release of held outputs) is waited for up to
   `IDLE_WAIT_S`: handing the batch over instead would keep both threads busy, each
   batch fetched meanwhile handed over too, until the slot ran dry. Past that the
   batch is handed over as usual.
2. It runs the slot's `Slot.process_batch`: the same operators, statistics, and
   outputs held after a barrier until its commit. A chain that raises fails the slot
   (`Slot.on_fatal`), as on the slot thread: the restart strategy rolls back.

A hung function would now hold the fetch thread — no checkpoint timeout noticed, no
stop served — so a watchdog thread bounds it (as Flink's task cancellation does):

3. Every `WATCH_EVERY_S`, while a batch runs: when the checkpoint has waited past its
   timeout (in flight since its trigger, or due since the last one completed plus the
   interval: the held loop cannot trigger it), or a stop has waited past
   ``shutdown_timeout_s``, it notes where the chain is (`Slot.stuck_in`) and
   interrupts the main thread with `INTERRUPT_SIGNAL`.
4. The signal's handler raises `ChainInterrupted` inside the function — a
   `BaseException`, which the operators' per-record error handling (``except
   Exception``) lets through — and `run` turns it into `CheckpointTimedOut` (the
   restart strategy decides, as for a stuck slot thread) or `ShutdownOverran`.
5. A function still running `INTERRUPT_GRACE_S` after the interrupt (it swallowed
   it, or waits in C code that does not return on a signal) cannot be recovered from
   in this process: the worker exits with `ClientStuck`'s code 3, and a fresh process
   fences its transaction and takes over.

While a batch runs past half the checkpoint timeout, `overdue` says so for
``/ready``, naming the operator and record, as `CheckpointCoordinator.overdue` does
for a slot thread.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

from weir.operators.chain import Batch
from weir.service.checkpoint import CheckpointTimedOut
from weir.service.exceptions import ClientStuck, ShutdownOverran
from weir.service.slots import SOURCES, Slot

if TYPE_CHECKING:
    from weir.service.checkpoint import CheckpointCoordinator
    from weir.service.slot_pool import SlotPool

log = logging.getLogger(__name__)

WATCH_EVERY_S = 0.1
IDLE_WAIT_S = 0.05  # the longest the fetch thread waits for the slot thread to finish an item
INTERRUPT_GRACE_S = 5.0  # a function still running this long after the interrupt: exit
INTERRUPT_SIGNAL = signal.SIGUSR1


class ChainInterrupted(BaseException):
    """Raised in the fetch thread's chain by the watchdog's signal (step 4); carries
    the failure `InlineChain.run` raises in its place."""

    def __init__(self, failure: BaseException) -> None:
        super().__init__(str(failure))
        self.failure = failure


class InlineChain:
    """Runs the one slot's stateless chain on the fetch thread, and watches it."""

    def __init__(
        self,
        slots: SlotPool,
        stopping: threading.Event,
        shutdown_timeout_s: float,
        enabled: bool,
    ) -> None:
        self.slots = slots
        self.stopping = stopping
        self.shutdown_timeout_s = shutdown_timeout_s
        self.enabled = enabled  # one slot, a stateless plan (the worker decides)
        self.coordinator: CheckpointCoordinator | None = None
        self.running: Slot | None = None  # the slot whose chain the fetch thread runs now
        self.runs = 0  # batches run, ever (the watchdog tells a new batch from a stuck one)
        self.batches = 0  # batches the fetch thread ran itself (/status)
        self._interrupt: BaseException | None = None  # what the signal handler raises
        self._checked: tuple[Slot | None, bool] = (None, False)  # a slot, and usable
        self._watchdog: threading.Thread | None = None
        self._done = threading.Event()
        self._previous: Any = signal.SIG_DFL  # the signal's handler before `start`

    # -- the fetch thread ------------------------------------------------------
    def start(self, coordinator: CheckpointCoordinator) -> None:
        """From the fetch loop's thread, before it starts: install the interrupt's
        handler and start the watchdog — only on the main thread, else stay off."""
        self.coordinator = coordinator
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            self.enabled = False
            return
        self._previous = signal.signal(INTERRUPT_SIGNAL, self._on_interrupt)
        self._done.clear()
        self._watchdog = threading.Thread(target=self._watch, name="weir-watchdog", daemon=True)
        self._watchdog.start()

    def stop(self) -> None:
        """From the same thread, once the fetch loop ended: stop watching, and give the
        signal back to its previous handler."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        self._done.set()
        watchdog.join(2 * WATCH_EVERY_S + 1.0)
        signal.signal(INTERRUPT_SIGNAL, self._previous)

    def usable(self, slot: Slot) -> bool:
        """Can ``slot``'s chain run here (see the module)? Decided once per slot."""
        checked, ok = self._checked
        if checked is slot:
            return ok
        chain = slot.chain
        if chain is None:  # the slot thread has not built it yet
            return False
        ok = not (chain.inputs or chain.windows or chain.clocks) and slot.state is None
        self._checked = (slot, ok)
        return ok

    def run(self, per_slot: list[list[Batch]]) -> bool:
        """Steps 1-2 for a routed fetch; False when the batches are to be handed over.
        Raises `CheckpointTimedOut` or `ShutdownOverran` when interrupted (step 4)."""
        if not self.enabled:
            return False
        slot = self.slots.slots[0]
        if not (self.usable(slot) and slot.inbox.idle_and_empty(IDLE_WAIT_S)):
            return False
        self.runs += 1
        self._interrupt = None
        self.running = slot
        try:
            for batch in per_slot[0]:
                slot.process_batch(SOURCES, batch)
                self.batches += 1
        except ChainInterrupted as interrupted:
            self.running = None  # first: a late signal must not raise in this handler
            failure = interrupted.failure
            if isinstance(failure, CheckpointTimedOut):  # recorded as the coordinator's
                failure = self.coordinator.timed_out(str(failure))
            raise failure from None
        except BaseException as exc:  # a failed chain fails its slot, as on its thread
            self.running = None  # likewise, before the slot's failure is reported
            slot.on_fatal(exc)
        finally:
            self.running = None
        return True

    def _on_interrupt(self, _signum: int, _frame: FrameType | None) -> None:
        """Step 4, on the main thread: raise in the chain if it still runs."""
        failure = self._interrupt
        if failure is not None and self.running is not None:
            self._interrupt = None
            raise ChainInterrupted(failure)

    # -- /ready ------------------------------------------------------------------
    def overdue(self) -> str | None:
        """Why the worker is not ready while the fetch thread runs a batch past half
        the checkpoint timeout (None otherwise)."""
        slot, coordinator = self.running, self.coordinator
        if slot is None or coordinator is None:
            return None
        checkpoint, age = coordinator.waiting(time.monotonic())
        if age <= coordinator.timeout_s / 2:
            return None
        return f"checkpoint {checkpoint} waiting for {age:.1f}s: {_where(slot)}"

    # -- the watchdog thread -------------------------------------------------------
    def _watch(self) -> None:
        """Steps 3 and 5."""
        stop_seen: float | None = None
        interrupted: tuple[int, float] | None = None  # the run interrupted, and when
        main = threading.main_thread().ident
        while not self._done.wait(WATCH_EVERY_S):
            now = time.monotonic()
            if self.stopping.is_set() and stop_seen is None:
                stop_seen = now
            slot, run = self.running, self.runs
            if slot is None:
                interrupted = None
                continue
            if interrupted is not None:
                if interrupted[0] == run and now - interrupted[1] > INTERRUPT_GRACE_S:
                    _exit_stuck(slot, now - interrupted[1])
                continue
            failure = self._failure(slot, now, stop_seen)
            if failure is not None:
                self._interrupt = failure
                interrupted = (run, now)
                signal.pthread_kill(main, INTERRUPT_SIGNAL)

    def _failure(self, slot: Slot, now: float, stop_seen: float | None) -> BaseException | None:
        """Step 3: what to interrupt the chain with, if anything."""
        if stop_seen is not None and now - stop_seen > self.shutdown_timeout_s:
            return ShutdownOverran(
                f"stopping overran shutdown_timeout_s={self.shutdown_timeout_s:g}:"
                f" the chain on the fetch thread did not return: {_where(slot)}"
            )
        coordinator = self.coordinator
        checkpoint, age = coordinator.waiting(now)
        if age <= coordinator.timeout_s:
            return None
        return CheckpointTimedOut(
            f"checkpoint {checkpoint} did not complete within {coordinator.timeout_s:.0f}s"
            f" ({age:.1f}s): {_where(slot)}"
        )


def _where(slot: Slot) -> str:
    return slot.stuck_in() or f"slot {slot.slot} is running its chain on the fetch thread"


def _exit_stuck(slot: Slot, seconds: float) -> None:
    """Step 5: the function ignored the interrupt; leave, for a fresh process."""
    error = ClientStuck(
        f"a function did not return {seconds:.0f}s after it was interrupted: {_where(slot)};"
        " exiting for a fresh process to take over"
    )
    log.critical("%s", error)
    logging.shutdown()
    os._exit(error.exit_code)
