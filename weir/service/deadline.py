"""Deadlines Weir enforces itself on blocking Kafka client calls.

Some librdkafka calls can block past the timeout they are given — after a lost
coordinator connection, ``send_offsets_to_transaction`` and
``commit_transaction`` have been seen to wait forever — and a worker stuck in
one holds its partitions, which is worse than a dead worker. So such calls run
on a helper thread (librdkafka releases the GIL while it waits) and the caller
waits at most the deadline:

1. The call is handed to the caller's one helper thread.
2. The caller waits up to ``seconds`` for its result (or exception).
3. On time: the result is returned, the exception re-raised.
4. Past the deadline: `CallTimedOut` is raised and the helper thread is
   abandoned — it may still be inside the client — and a fresh one serves the
   next call. The caller must treat the client as lost (a producer: replace it;
   its successor's ``init_transactions`` fences it).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import KafkaException

from weir.service.exceptions import ClientStuck, KafkaUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


class CallTimedOut(Exception):
    """A client call did not return within its deadline; the client is presumed stuck."""


class _Call:
    """One call and, once it has returned or raised, its outcome."""

    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class BoundedCaller:
    """Runs blocking calls on a helper thread and waits for each at most its deadline.

    The helper is a daemon thread, so one abandoned inside a call never keeps the
    process from exiting."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.abandoned = 0  # helper threads left inside a call that never returned
        self._calls: queue.SimpleQueue[_Call] = self._start()

    def _start(self) -> queue.SimpleQueue[_Call]:
        calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        threading.Thread(
            target=_serve, args=(calls,), name=f"weir-{self.name}", daemon=True
        ).start()
        return calls

    def call(self, fn: Callable[[], T], seconds: float, what: str) -> T:
        """``fn()``'s result, or `CallTimedOut` once ``seconds`` have passed (steps 1-4)."""
        call = _Call(fn)
        self._calls.put(call)  # Step 1
        if call.done.wait(seconds):  # Step 2
            if call.error is not None:  # Step 3
                raise call.error
            return call.result
        self._calls = self._start()  # Step 4: the stuck thread keeps the old queue
        self.abandoned += 1
        log.error("%s did not return within %.1fs; abandoning the call", what, seconds)
        raise CallTimedOut(f"{what} did not return within {seconds:.1f}s")


def _serve(calls: queue.SimpleQueue[_Call]) -> None:
    while True:
        call = calls.get()
        try:
            call.result = call.fn()
        except BaseException as exc:  # handed to the caller, who decides
            call.error = exc
        call.done.set()


# Short enough that a worker is back within seconds of the broker's return; each try
# is one cheap request, so trying every 5 s during a long outage costs nothing.
BACKOFF_MAX_S = 5.0


def retry_while_unavailable(
    fn: Callable[[], T],
    budget_s: float,
    stopping: threading.Event,
    what: str,
    note: Callable[[str | None], None] = lambda _: None,
    refresh: Callable[[], object] | None = None,
) -> T:
    """``fn()``, tried again with exponential backoff (1 s doubling to 5 s) while Kafka
    cannot be reached — it raises `KafkaUnavailable`, a client error, or a future's
    `TimeoutError` — for up to
    ``budget_s``; then `KafkaUnavailable` (exit code 3), saying how long it waited.
    ``note`` gets the reason while waiting (for /ready) and None once ``fn`` succeeded;
    ``refresh`` runs before each new try (an admin client's metadata: after a broker
    restart it keeps sending leader epochs the broker has moved past until refreshed)."""
    started, backoff = time.monotonic(), 1.0
    while True:
        try:
            result = fn()
            note(None)
            return result
        except ClientStuck:
            raise  # not an outage: the process must go
        except (KafkaUnavailable, KafkaException, TimeoutError) as exc:
            if isinstance(exc, KafkaException):
                reason = exc.args[0].str()
            else:
                reason = str(exc) or "no answer in time"
            waited = time.monotonic() - started
            if waited >= budget_s or stopping.is_set():
                raise KafkaUnavailable(
                    f"{what}: {reason} (unreachable for {waited:.0f}s; gave up after {budget_s:g}s)"
                ) from None
            note(f"waiting for Kafka ({what}): {reason}")
            log.warning("%s: %s; trying again in %.0fs", what, reason, backoff)
            stopping.wait(backoff)
            backoff = min(BACKOFF_MAX_S, backoff * 2)
            if refresh is not None:
                with contextlib.suppress(KafkaException):
                    refresh()


def run_steps(
    steps: list[tuple[str, Callable[[float], object]]], budget_s: float, name: str
) -> None:
    """Run ``steps`` in order, each ``fn(seconds left)`` under what is left of one
    budget; `CallTimedOut`, naming the step, as soon as one overruns (the rest is not
    run: the overrunning call may still be using what they would touch)."""
    caller = BoundedCaller(name)
    deadline = time.monotonic() + budget_s
    for what, step in steps:
        left = max(0.1, deadline - time.monotonic())
        caller.call(lambda step=step, left=left: step(left), left, what)
