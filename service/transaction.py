"""The transactional output: the worker's one producer and its transactions.

Everything a worker writes — sink records, dead letters, repartitioned records,
changelog records — goes through this producer, and under exactly-once through
one open transaction at a time. This module alone creates, begins, commits,
aborts and replaces it; slots only ``produce`` on the producer it hands out.

Exactly-once, the life of the producer:

1. **Open.** A producer with ``transactional.id = <group>.<worker-id>``;
   ``init_transactions`` fences any older instance under that id (a dead or
   stalled incarnation of this worker) and aborts its open transaction; then
   the first transaction begins.
2. **Commit** (a checkpoint's step 3): ``send_offsets_to_transaction`` for each
   group member with its own group metadata, ``commit_transaction``, and the
   next transaction begins at once, so slots always produce into an open one.
3. **Restart** (a rollback): abort by starting over — purge what is queued,
   abort, and open a fresh producer under the same id, whose
   ``init_transactions`` aborts the open transaction and fences the old
   instance. A plain ``abort_transaction`` is not enough after an error that
   needs an epoch bump: librdkafka may then resend records of the aborted
   transaction under the new epoch, into the next transaction (seen: one record
   committed twice after an ILLEGAL_GENERATION offset commit and a skipped
   sequence).
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
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from service.clients import ClientSettings
from service.exceptions import DuplicateWorker, KafkaUnavailable, WorkerFailed

log = logging.getLogger(__name__)

FENCINGS_ALLOWED = 3  # fencings within FENCING_WINDOW_S before the worker gives up
FENCING_WINDOW_S = 300.0

MemberOffsets = list[tuple[Consumer, list[TopicPartition]]]


class TransactionFailed(Exception):
    """A commit did not happen; nothing of the transaction is visible."""


class TransactionalOutput:
    """Owns the worker's producer, its transactions and their failures."""

    def __init__(
        self,
        settings: ClientSettings,
        exactly_once: bool,
        timeout_s: float,
        duplicate_check: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.duplicate_check = duplicate_check
        self.exactly_once = exactly_once
        self.timeout_s = timeout_s
        self.size_limits: dict[str, int] = {}
        self.producer: Producer | None = None
        self.fencings: list[float] = []  # when the producer was last fenced
        self._delivery_failures: list[str] = []

    # -- Step 1 ---------------------------------------------------------------
    def open(self, size_limits: dict[str, int]) -> None:
        """Create the producer (batches fit the smallest topic limit) and begin."""
        self.size_limits = size_limits
        self.producer = self._new_producer()
        if self.exactly_once:
            self.producer.begin_transaction()

    def _new_producer(self) -> Producer:
        conf = self.settings.producer(self.size_limits, self._on_delivery)
        producer = self.settings.open(Producer, conf)
        if self.exactly_once:
            try:
                producer.init_transactions(self.timeout_s)
            except KafkaException as exc:
                raise KafkaUnavailable(
                    f"cannot initialise transactions as {self.settings.transactional_id!r}:"
                    f" {exc.args[0].str()}"
                ) from None
        return producer

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
        offsets instead. Raises `TransactionFailed` when nothing was committed.
        """
        try:
            if self.exactly_once:
                for member, part in offsets:
                    self.producer.send_offsets_to_transaction(
                        part, member.consumer_group_metadata(), timeout_s
                    )
                self.producer.commit_transaction(timeout_s)
                self.producer.begin_transaction()
                committed = True
            else:
                left = self.producer.flush(timeout_s)
                if left:
                    raise TransactionFailed(f"{left} outputs not acknowledged after flush")
                committed = self._commit_offsets(offsets)
        except KafkaException as exc:
            raise TransactionFailed(str(exc.args[0])) from exc
        self.check_deliveries()
        return committed

    def check_deliveries(self) -> None:
        """Raise `TransactionFailed` if the broker refused a record since the last check."""
        failures, self._delivery_failures = self._delivery_failures, []
        if failures:
            raise TransactionFailed(f"output delivery failed: {failures[0]}")

    def _commit_offsets(self, offsets: MemberOffsets) -> bool:
        try:
            for member, part in offsets:
                member.commit(offsets=part, asynchronous=False)
            return True
        except KafkaException as exc:
            log.warning("offset commit refused (%s); retrying at the next checkpoint", exc)
            return False

    # -- Step 3 ---------------------------------------------------------------
    def restart(self) -> None:
        """Drop everything since the last commit and begin anew (a rollback)."""
        self._delivery_failures = []
        if not self.exactly_once:
            return
        old = self.producer
        with contextlib.suppress(KafkaException):
            old.purge(in_queue=True, in_flight=True)
        try:
            old.abort_transaction(1.0)
        except KafkaException as exc:
            if exc.args[0].fatal():
                self._fenced(exc.args[0].str())
        with contextlib.suppress(KafkaException):  # a fenced producer raises its fatal error
            old.poll(0)  # serve the purged records' reports
        self._delivery_failures = []
        self.producer = self._new_producer()
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
        if self.exactly_once and self.producer is not None:
            with contextlib.suppress(KafkaException):
                self.producer.abort_transaction(5.0)
