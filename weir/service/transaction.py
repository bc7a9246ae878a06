"""The transactional output: the worker's one producer and its transactions.

Everything a worker writes — sink records, dead letters, repartitioned records,
changelog records — goes through this producer, and under exactly-once through
one open transaction at a time. This module alone creates, begins, commits,
aborts and replaces it; slots only ``produce`` on the producer it hands out.

Exactly-once, the life of the producer:

1. **Open.** A producer with ``transactional.id = <group>.<worker-id>``;
   ``init_transactions`` fences any older instance under that id (a dead or
   stalled incarnation of this worker) and aborts its open transaction; then
   the first transaction begins. While Kafka cannot be reached this is retried
   with backoff for up to ``broker_timeout_s``, and `unavailable` says why.
2. **Commit** (a checkpoint's step 3): ``send_offsets_to_transaction`` for each
   group member with its own group metadata, ``commit_transaction``, and the
   next transaction begins at once, so slots always produce into an open one.
   Every call runs under a deadline Weir enforces (`weir.service.deadline`): some
   librdkafka calls block past their own timeout after a lost coordinator
   connection. Errors are classified as librdkafka documents them:
   *retriable* — the same call again, until the commit deadline;
   *abortable* (``txn_requires_abort``) — nothing committed: `TransactionFailed`;
   anything else once ``commit_transaction`` was called — a timeout, a call past
   its deadline, a fatal error — may have committed on the broker:
   `TransactionAmbiguous`. The caller then rolls back *and* takes its state from
   the changelogs again, so a commit that did happen is never taken for one
   that did not (`weir.service.worker`).
3. **Restart** (a rollback): abort by starting over — purge what is queued,
   abort, and open a fresh producer under the same id, whose
   ``init_transactions`` aborts the open transaction (or completes one the
   broker was already committing) and fences the old instance. A plain
   ``abort_transaction`` is not enough after an error that needs an epoch bump:
   librdkafka may then resend records of the aborted transaction under the new
   epoch, into the next transaction. A producer stuck in a call is not touched
   again; the new instance fences it.
4. **Close**: abort the empty transaction that followed the last commit, flush.

Fencing: a fatal error while aborting means this producer was fenced — the
broker aborted a transaction that outlived ``transaction.timeout.ms`` while the
worker was stalled, or another instance took the id. The group tells which
(`duplicate_check`): if another live member uses this worker's client id, the
worker stops with `DuplicateWorker` (the newer instance keeps running, no
fencing back and forth); otherwise a fresh producer carries on. Should fencing
still repeat (``FENCINGS_ALLOWED`` within ``FENCING_WINDOW_S``), the worker stops
with a line saying so.

At-least-once has no transactions: a commit flushes (every record produced so
far is acknowledged by the broker) and then commits the input offsets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from weir.service.clients import ClientSettings
from weir.service.deadline import BoundedCaller, CallTimedOut, retry_while_unavailable
from weir.service.exceptions import ClientStuck, DuplicateWorker, KafkaUnavailable, WorkerFailed
from weir.service.topics import TopicLimits

log = logging.getLogger(__name__)

FENCINGS_ALLOWED = 3  # fencings within FENCING_WINDOW_S before the worker gives up
FENCING_WINDOW_S = 300.0
# Past a call's own timeout, how long before Weir calls it stuck. Long enough for a broker
# restart (the call completes once the broker is back: the producer never re-bootstraps);
# a call this late is one librdkafka lost, and the worker exits to be restarted (an
# abandoned call was seen to trip an assertion inside librdkafka when it woke up).
STUCK_AFTER_S = 60.0

MemberOffsets = list[tuple[Consumer, list[TopicPartition]]]


class TransactionFailed(Exception):
    """A commit did not happen; nothing of the transaction is visible."""


class TransactionAmbiguous(TransactionFailed):
    """``commit_transaction`` failed in a way that may have committed on the broker."""


class TransactionalOutput:
    """Owns the worker's producer, its transactions and their failures."""

    def __init__(
        self,
        settings: ClientSettings,
        exactly_once: bool,
        timeout_s: float,
        duplicate_check: Callable[[], str | None] = lambda: None,
        broker_timeout_s: float = 300.0,
        stopping: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.duplicate_check = duplicate_check
        self.exactly_once = exactly_once
        self.timeout_s = timeout_s
        self.broker_timeout_s = broker_timeout_s
        self.stopping = stopping or threading.Event()
        self.limits: dict[str, TopicLimits] = {}
        self.producer: Producer | None = None
        self.unavailable: str | None = None  # why no producer is open right now
        self.fencings: list[float] = []  # when the producer was last fenced
        self._delivery_failures: list[str] = []
        self._caller = BoundedCaller("transactions")
        self._stuck = False  # the producer is inside a call that never returned
        self._retired: list[Producer] = []
        self._commits = 0
        self._fault = _fault_injection()

    # -- Step 1 ---------------------------------------------------------------
    def open(self, limits: dict[str, TopicLimits]) -> None:
        """Create the producer (batches fit the smallest topic limit) and begin."""
        self.limits = limits
        self.producer = self._new_producer_retrying()
        if self.exactly_once:
            self.producer.begin_transaction()

    def _new_producer_retrying(self) -> Producer:
        """A new producer; while Kafka cannot be reached, again with backoff until
        ``broker_timeout_s`` has passed (then `KafkaUnavailable`, exit code 3). Each try
        is a fresh producer and a failed one is retired, never destroyed: both calling
        ``init_transactions`` again after a timeout ("retry call to resume") and
        destroying a producer whose init was still pending tripped an assertion inside
        librdkafka (seen with 2.16) while the broker restarted."""

        def attempt() -> Producer:
            producer = self._producer()
            try:
                self._init_transactions(producer)
            except KafkaUnavailable:
                self._retire(producer)
                raise
            return producer

        budget, stopping = self.broker_timeout_s, self.stopping
        return retry_while_unavailable(attempt, budget, stopping, "starting a producer", self._note)

    def _retire(self, producer: Producer) -> None:
        """Keep a replaced producer referenced for the life of the process: destroying one
        whose transactional request is still pending inside librdkafka (seen with 2.16; a timed-out
        init or abort while the broker restarts) was seen to abort the process."""
        self._retired.append(producer)

    def _note(self, reason: str | None) -> None:
        self.unavailable = reason

    def _producer(self) -> Producer:
        """Exactly-once: without a delivery callback — a refused record fails the
        transaction, and ``commit_transaction`` raises librdkafka's error naming the
        topic, partition and reason (e.g. "ProduceRequest for t [0] with 1 message(s)
        failed: Broker: Message size too large"); the callback would cost every record
        a per-record state in confluent-kafka (measured: ~5% of q0's fetch thread).
        At-least-once: with it, since nothing else would tell."""
        on_delivery = None if self.exactly_once else self._on_delivery
        return self.settings.open(Producer, self.settings.producer(self.limits, on_delivery))

    def _init_transactions(self, producer: Producer) -> None:
        if not self.exactly_once:
            return
        try:
            self._caller.call(
                lambda: producer.init_transactions(self.timeout_s),
                self.timeout_s + STUCK_AFTER_S,
                "init_transactions",
            )
        except CallTimedOut as exc:
            raise ClientStuck(_stuck(exc)) from None
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"cannot initialise transactions as {self.settings.transactional_id!r}:"
                f" {self.settings.redact(_describe(exc))}"
            ) from None

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._delivery_failures.append(f"{msg.topic()}: {err.str()}")

    def poll(self) -> None:
        """Serve delivery reports and librdkafka's log; a fatal error fails the epoch."""
        try:
            self.producer.poll(0)
        except KafkaException as exc:  # a fatal producer error, e.g. fenced
            raise TransactionFailed(f"producer failed: {exc.args[0].str()}") from exc

    # -- Step 2 ---------------------------------------------------------------
    def commit(self, offsets: MemberOffsets, timeout_s: float) -> bool:
        """Make everything produced since the last commit visible, with ``offsets``.

        Exactly-once: offsets and outputs in one transaction, then the next
        begins. At-least-once: flush, then commit the offsets; a refused offset
        commit (typically a rebalance in progress) undoes nothing — the outputs
        are out — so it returns False and the next checkpoint commits newer
        offsets instead. Raises `TransactionFailed` when nothing was committed,
        `TransactionAmbiguous` when it cannot tell.
        """
        deadline = time.monotonic() + timeout_s
        if not self.exactly_once:
            left = self._call(lambda t: self.producer.flush(t), deadline, "flush")
            if left:
                raise TransactionFailed(f"{left} outputs not acknowledged after flush")
            committed = self._commit_offsets(offsets)
            self.check_deliveries()
            return committed
        producer = self.producer
        try:
            for member, part in offsets:
                metadata = member.consumer_group_metadata()
                self._call(
                    lambda t, part=part, metadata=metadata: producer.send_offsets_to_transaction(
                        part, metadata, t
                    ),
                    deadline,
                    "send_offsets_to_transaction",
                )
        except KafkaException as exc:
            raise TransactionFailed(_describe(exc)) from exc
        self._inject_fault(committed=False)
        try:
            self._call(lambda t: producer.commit_transaction(t), deadline, "commit_transaction")
            self._inject_fault(committed=True)
        except KafkaException as exc:
            if exc.args[0].txn_requires_abort():
                raise TransactionFailed(_describe(exc)) from exc
            raise TransactionAmbiguous(_describe(exc)) from exc
        producer.begin_transaction()
        return True

    def _call(self, fn: Callable[[float], Any], deadline: float, what: str) -> Any:
        """``fn(seconds left)`` under a deadline Weir enforces; a retriable error is
        tried again while time is left. A call still running ``STUCK_AFTER_S`` past its
        deadline raises `ClientStuck`: the worker exits to be restarted."""
        while True:
            left = max(0.1, deadline - time.monotonic())
            try:
                return self._caller.call(lambda left=left: fn(left), left + STUCK_AFTER_S, what)
            except CallTimedOut as exc:
                self._stuck = True
                raise ClientStuck(_stuck(exc)) from None
            except KafkaException as exc:
                error = exc.args[0]
                if not error.retriable() or time.monotonic() >= deadline:
                    raise
                log.info("%s: %s; trying again", what, error.str())
                time.sleep(0.1)

    def check_deliveries(self) -> None:
        """Raise `TransactionFailed` if the broker refused a record since the last check.
        Only an at-least-once producer reports refusals here; under exactly-once none
        arrive (no callback), and the commit fails instead."""
        failures, self._delivery_failures = self._delivery_failures, []
        if failures:
            raise TransactionFailed(f"output delivery failed: {failures[0]}")

    def _commit_offsets(self, offsets: MemberOffsets) -> bool:
        """At-least-once: commit on each member itself, on this (the fetcher) thread. A
        consumer's synchronous commit must not move to a helper thread: during a
        rebalance it waits for the consumer to be polled, which the fetcher would then
        not do until the call returned."""
        try:
            for member, part in offsets:
                member.commit(offsets=part, asynchronous=False)
            return True
        except KafkaException as exc:
            log.warning("offset commit refused (%s); retrying at the next checkpoint", exc)
            return False

    def _inject_fault(self, committed: bool) -> None:
        """``WEIR_FAULT_INJECT=ambiguous-commit:N``: the N-th commit succeeds on the broker
        but reports a retriable timeout; ``fail-commit:N``: the N-th commit fails before
        it reaches the broker, as an abortable error (for the recovery tests)."""
        kind, at = self._fault
        if committed:
            self._commits += 1
        if kind == "ambiguous-commit" and committed and self._commits == at:
            log.error("fault injection: reporting a committed transaction as timed out")
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "injected", retriable=True))
        if kind == "fail-commit" and not committed and self._commits + 1 == at:
            self._commits += 1
            log.error("fault injection: failing a commit before it is sent")
            raise TransactionFailed("injected: commit failed")

    # -- Step 3 ---------------------------------------------------------------
    def restart(self) -> None:
        """Drop everything since the last commit and begin anew (a rollback)."""
        self._delivery_failures = []
        if not self.exactly_once:
            return
        old, stuck = self.producer, self._stuck
        self._stuck = False
        if not stuck:
            with contextlib.suppress(KafkaException):
                old.purge(in_queue=True, in_flight=True)
            try:
                self._caller.call(lambda: old.abort_transaction(1.0), 1.0 + STUCK_AFTER_S, "abort")
            except KafkaException as exc:
                if exc.args[0].fatal():
                    self._fenced(exc.args[0].str())
            except CallTimedOut as exc:
                self._stuck = True
                raise ClientStuck(_stuck(exc)) from None
            with contextlib.suppress(KafkaException):  # a fenced producer raises its fatal error
                old.poll(0)  # serve the purged records' reports
        self._delivery_failures = []
        self._retire(old)
        self.producer = self._new_producer_retrying()
        self.producer.begin_transaction()

    def _fenced(self, cause: str) -> None:
        duplicate = self.duplicate_check()
        if duplicate is not None:
            raise DuplicateWorker(
                f"producer {self.settings.transactional_id!r} was fenced ({cause}) and {duplicate};"
                " run each --worker-id once"
            )
        now = time.monotonic()
        self.fencings = [t for t in self.fencings if now - t < FENCING_WINDOW_S] + [now]
        if len(self.fencings) > FENCINGS_ALLOWED:
            raise WorkerFailed(
                f"producer {self.settings.transactional_id!r} was fenced {len(self.fencings)}"
                f" times in 5 minutes ({cause}); is another worker running with --worker-id"
                f" {self.settings.config.worker_id}?"
            )
        log.warning("producer fenced (%s); starting a new one", cause)

    # -- Step 4 ---------------------------------------------------------------
    def close(self, timeout_s: float) -> None:
        """After the last commit: abort the empty transaction that followed it, flush."""
        if self.exactly_once:
            self.producer.abort_transaction(timeout_s)
        self.producer.flush(timeout_s)

    def abandon(self) -> None:
        """After a failure: abort what is open; committed work stays committed."""
        if self.exactly_once and self.producer is not None and not self._stuck:
            with contextlib.suppress(KafkaException):
                self.producer.abort_transaction(5.0)


def _stuck(exc: CallTimedOut) -> str:
    return (
        f"{exc} past its own timeout: a Kafka client call that ignores its timeout;"
        " exiting to be restarted (the new process fences the stuck producer)"
    )


def _describe(exc: BaseException) -> str:
    return exc.args[0].str() if isinstance(exc, KafkaException) else str(exc)


def _fault_injection() -> tuple[str, int]:
    spec = os.environ.get("WEIR_FAULT_INJECT", "")
    name, _, count = spec.partition(":")
    return (name, int(count)) if count.isdigit() else ("", 0)
