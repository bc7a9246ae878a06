"""Restoring keyed state from changelog topics when partitions are assigned.

One restore thread per worker with its own consumer (``assign``, never a
group member, read_committed). For each assigned source partition it replays,
for every stateful operator, the changelog partition from the offset the local
RocksDB recorded (local recovery: only the tail after a restart on the same
machine) or from the start, writing each fetched batch and its offset in one
RocksDB write batch. The worker keeps that source partition paused until its
restore is done; other partitions keep processing.

It never waits for records that will not come: the end is the changelog's
last stable offset, read when the restore starts; an empty partition ends at
once; a recorded offset below the log start (compacted or deleted segments)
wipes the local copy and restores what the log still holds.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from service.metrics import Metrics
from state.layout import split_changelog_key
from state.store import StateStore

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True)
class StatefulOperator:
    """A stateful operator as the restorer sees it."""

    name: str
    source_topic: str
    changelog: str
    states: tuple[str, ...]


class RestoreFailed(Exception):
    pass


class Restorer(threading.Thread):
    """Restores partitions one at a time, in the order they were assigned."""

    def __init__(
        self,
        consumer_conf: dict,
        admin: AdminClient,
        store: StateStore,
        operators: list[StatefulOperator],
        metrics: Metrics,
        stall_timeout_s: float = 60.0,
        standby: bool = False,
    ) -> None:
        super().__init__(name="weir-restore", daemon=True)
        self.consumer_conf = consumer_conf
        self.admin = admin
        self.store = store
        self.operators = operators
        self.metrics = metrics
        self.stall_timeout_s = stall_timeout_s
        self.tasks: queue.SimpleQueue[TopicPartitionKey | None] = queue.SimpleQueue()
        self.done: queue.SimpleQueue[TopicPartitionKey] = queue.SimpleQueue()
        self.cancelled: set[TopicPartitionKey] = set()
        self.error: BaseException | None = None
        self.restored_records = 0  # total, for tests and /status
        self.standby_enabled = standby
        self.standby: frozenset[TopicPartitionKey] = frozenset()
        self.tailing: set[tuple[str, int]] = set()
        self.standby_records = 0
        self.by_changelog = {op.changelog: op for op in operators}

    def submit(self, tp: TopicPartitionKey) -> None:
        self.cancelled.discard(tp)
        self.tasks.put(tp)

    def cancel(self, tp: TopicPartitionKey) -> None:
        self.cancelled.add(tp)

    def stop(self) -> None:
        self.tasks.put(None)

    def finished(self) -> list[TopicPartitionKey]:
        out = []
        while not self.done.empty():
            out.append(self.done.get_nowait())
        return out

    def set_standby(self, partitions: set[TopicPartitionKey]) -> None:
        """Source partitions whose state to keep warm (standby replicas); thread-safe."""
        self.standby = frozenset(partitions)

    def run(self) -> None:
        consumer = Consumer(self.consumer_conf)
        tailer = Consumer(self.consumer_conf) if self.standby_enabled else None
        try:
            while True:
                try:
                    tp = self.tasks.get(timeout=0.1 if tailer else None)
                except queue.Empty:
                    self._tail_standby(tailer)  # restores come first; idle time keeps copies warm
                    continue
                if tp is None:
                    return
                if tp in self.cancelled:
                    continue
                started = time.monotonic()
                count = sum(
                    self._restore(consumer, op, tp[1])
                    for op in self.operators
                    if op.source_topic == tp[0]
                )
                elapsed = time.monotonic() - started
                self.metrics.state_restore.observe(elapsed)
                log.info("restored %s[%d]: %d records in %.2fs", tp[0], tp[1], count, elapsed)
                self.done.put(tp)
        except BaseException as exc:
            log.error("state restore failed: %s", exc)
            self.error = exc
        finally:
            consumer.close()
            if tailer is not None:
                tailer.close()

    def _tail_standby(self, tailer: Consumer) -> None:
        """Apply the newest changelog records of partitions other workers own."""
        wanted = {
            (op.changelog, p)
            for topic, p in self.standby
            for op in self.operators
            if op.source_topic == topic
        }
        if wanted != self.tailing:
            tailer.assign(
                [TopicPartition(t, p, self._standby_start(t, p)) for t, p in sorted(wanted)]
            )
            self.tailing = wanted
        if not wanted:
            return
        writes: dict[tuple[str, int], list] = {}
        ends: dict[tuple[str, int], int] = {}
        for m in tailer.consume(5000, 0.1):
            if m.error() is not None:
                continue
            state, skey = split_changelog_key(m.key())
            key = (m.topic(), m.partition())
            writes.setdefault(key, []).append((state, skey, m.value()))
            ends[key] = m.offset() + 1
        for (topic, p), batch in writes.items():
            op = self.by_changelog[topic]
            self.store.restore(batch, op.name, p, ends[(topic, p)])
            self.standby_records += len(batch)

    def _standby_start(self, changelog: str, partition: int) -> int:
        offset = self.store.changelog_offset(self.by_changelog[changelog].name, partition)
        return OFFSET_BEGINNING if offset is None else offset

    def _end_offsets(self, tp: TopicPartition) -> tuple[int, int]:
        """(log start, last stable offset) of a changelog partition."""
        specs = {tp: OffsetSpec.earliest()}
        low = self.admin.list_offsets(specs, request_timeout=30)[tp].result(timeout=30).offset
        specs = {tp: OffsetSpec.latest()}
        futures = self.admin.list_offsets(
            specs, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=30
        )
        return low, futures[tp].result(timeout=30).offset

    def _restore(self, consumer: Consumer, op: StatefulOperator, partition: int) -> int:
        store, source = self.store, (op.source_topic, partition)
        tp = TopicPartition(op.changelog, partition)
        low, end = self._end_offsets(tp)
        start = store.changelog_offset(op.name, partition)
        if start is None or start < low:
            if start is not None:
                log.warning(
                    "%s[%d]: local state at offset %d is older than the log start %d"
                    " (compacted or deleted); rebuilding it from the changelog",
                    op.changelog,
                    partition,
                    start,
                    low,
                )
            store.wipe(op.name, op.states, partition)
            start = low
        if start >= end:
            store.restore([], op.name, partition, max(start, end))
            return 0
        consumer.assign([TopicPartition(op.changelog, partition, start or OFFSET_BEGINNING)])
        restored, position = 0, start
        counter = self.metrics.restored_records.labels(self.metrics.job, op.name)
        last_progress = time.monotonic()
        try:
            while position < end:
                if source in self.cancelled:
                    return restored
                msgs = consumer.consume(5000, 0.2)
                writes, eof = [], False
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            eof = True
                            continue
                        raise KafkaException(err)
                    state, skey = split_changelog_key(m.key())
                    writes.append((state, skey, m.value()))
                    position = m.offset() + 1
                if writes:
                    store.restore(writes, op.name, partition, position)
                    restored += len(writes)
                    counter.inc(len(writes))
                    self.restored_records += len(writes)
                    last_progress = time.monotonic()
                if eof:
                    break  # read_committed end: only aborted data or markers remain
                if time.monotonic() - last_progress > self.stall_timeout_s:
                    raise RestoreFailed(
                        f"restore of {op.changelog}[{partition}] made no progress for"
                        f" {self.stall_timeout_s:.0f}s at offset {position} (end {end})"
                    )
            store.restore([], op.name, partition, max(position, end))
        finally:
            consumer.unassign()
        return restored
