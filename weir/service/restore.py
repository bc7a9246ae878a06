"""Restoring keyed state from changelog topics when partitions are assigned.

One restore thread per worker with its own consumer (``assign``, never a
group member, read_committed). For each assigned source partition it replays,
for every stateful operator, the changelog partition from the offset the local
RocksDB recorded (local recovery: only the tail after a restart on the same
machine) or from the start, writing each fetched batch and its offset in one
RocksDB write batch. The worker keeps that source partition paused until its
restore is done; other partitions keep processing.

The end of a restore is the changelog's log end offset when it starts: the
previous owner committed everything it wrote before it let the partition go,
so every committed change lies below that offset. It is not the last stable
offset: a worker killed mid-checkpoint leaves an open transaction in the
changelog, which holds the last stable offset back until the broker aborts it
(after the dead producer's ``transaction.timeout.ms``), and read_committed
hides every record after it — including what later owners committed. Ending
there would restore stale state while the input offsets say those changes are
done: lost updates. So a restore that meets such a transaction waits for it to
be aborted, then reads on to the end. An empty partition ends at once; a
recorded offset below the log start (compacted or deleted segments) wipes the
local copy and restores what the log still holds.
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
    KafkaError,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from weir.operators.physical import KeyedState
from weir.service.changelog import Changelogs
from weir.service.clients import ClientSettings
from weir.service.config import WorkerConfig
from weir.service.deadline import retry_while_unavailable
from weir.service.exceptions import KafkaUnavailable
from weir.service.metrics import Metrics
from weir.state.layout import split_changelog_key
from weir.state.store import StateStore

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]


class RestoreFailed(Exception):
    pass


def check_states(
    op: KeyedState, changelog: str, batch: list[tuple[str, bytes, bytes | None]]
) -> None:
    """Refuse changelog records of a state ``op`` does not keep: the changelog was
    written by another kind of operator under the same name (a reduce that became a
    window), which the state check (`weir.service.upgrade`) cannot see from topic names."""
    unknown = {write[0] for write in batch}.difference(op.states)
    if unknown:
        raise RestoreFailed(
            f"{changelog} holds state {', '.join(sorted(unknown))}, which operator"
            f" {op.name!r} ({op.op.kind}) does not keep: another kind of operator had this"
            " name before. Give this one a new name (and start with --allow-state-reset to"
            " drop the old state), or restore the old operator"
        )


@dataclass
class _Changelog:
    """One changelog partition being replayed for a restore request."""

    op: KeyedState
    partition: int
    source: TopicPartitionKey
    token: int
    end: int
    position: int
    last_progress: float
    blocked: bool = False


@dataclass
class _Request:
    token: int
    started: float
    remaining: int
    records: int = 0


class Restorer(threading.Thread):
    """Restores assigned partitions concurrently, and keeps standby copies warm.

    All restoring changelog partitions share one consumer, so a small partition
    finishes at once even while a big one is still replaying. Every request has
    a token; a completion carries it, so the worker never mistakes the end of a
    cancelled restore for the end of a later one of the same partition.
    """

    def __init__(
        self,
        consumer_conf: dict,
        admin: AdminClient,
        store: StateStore,
        operators: list[KeyedState],
        metrics: Metrics,
        stall_timeout_s: float = 60.0,
        standby: bool = False,
        broker_timeout_s: float = 300.0,
    ) -> None:
        super().__init__(name="weir-restore", daemon=True)
        # Short fetch waits: the end of a partition shows as an empty fetch (EOF).
        self.consumer_conf = {**consumer_conf, "fetch.wait.max.ms": 10}
        self.admin = admin
        self.store = store
        self.operators = operators
        self.metrics = metrics
        self.stall_timeout_s = stall_timeout_s
        self.broker_timeout_s = broker_timeout_s
        self._halt = threading.Event()
        self.tasks: queue.SimpleQueue[tuple[str, TopicPartitionKey, int] | None] = (
            queue.SimpleQueue()
        )
        self.done: queue.SimpleQueue[tuple[TopicPartitionKey, int]] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.restored_records = 0  # total, for tests and /status
        self.standby_enabled = standby
        self.standby: frozenset[TopicPartitionKey] = frozenset()
        self.tailing: set[tuple[str, int]] = set()
        self.standby_records = 0
        self.by_changelog = {op.changelog: op for op in operators}
        self._tokens = 0
        self._active: dict[tuple[str, int], _Changelog] = {}
        self._requests: dict[TopicPartitionKey, _Request] = {}

    @classmethod
    def for_worker(
        cls,
        settings: ClientSettings,
        admin: AdminClient,
        store: StateStore,
        changelogs: Changelogs,
        metrics: Metrics,
        config: WorkerConfig,
    ) -> Restorer:
        """The restorer of a worker process (not started)."""
        return cls(
            settings.restore_consumer(),
            admin,
            store,
            changelogs.operators,
            metrics,
            # A restore may wait for a dead worker's open transaction: the broker
            # aborts it after its timeout, checking every 10 s by default.
            stall_timeout_s=max(60.0, 2 * settings.transaction_timeout_ms / 1000 + 20),
            standby=config.standby_replicas > 0,
            broker_timeout_s=config.broker_timeout_s,
        )

    def submit(self, tp: TopicPartitionKey) -> int:
        """Restore ``tp``'s state; returns the token its completion will carry."""
        self._tokens += 1
        self.tasks.put(("restore", tp, self._tokens))
        return self._tokens

    def cancel(self, tp: TopicPartitionKey) -> None:
        self.tasks.put(("cancel", tp, 0))

    def stop(self) -> None:
        self._halt.set()  # a wait for an unreachable broker ends too
        self.tasks.put(None)

    def finished(self) -> list[tuple[TopicPartitionKey, int]]:
        out = []
        while not self.done.empty():
            out.append(self.done.get_nowait())
        return out

    def run(self) -> None:
        consumer = Consumer(self.consumer_conf)
        tailer = Consumer(self.consumer_conf) if self.standby_enabled else None
        try:
            while True:
                try:
                    if self._active:  # replaying: only look for new requests
                        task = self.tasks.get_nowait()
                    elif tailer is not None:  # idle with standbys: tail between requests
                        task = self.tasks.get(timeout=0.1)
                    else:
                        task = self.tasks.get()
                except queue.Empty:
                    task = ()
                if task is None:
                    return
                if task:
                    kind, tp, token = task
                    self._forget(consumer, tp)
                    if kind == "restore":
                        self._begin(consumer, tp, token)
                    continue
                if self._active:
                    self._replay(consumer)
                elif tailer is not None:
                    self._tail_standby(tailer)  # idle: keep standby copies warm
        except BaseException as exc:
            log.error("state restore failed: %s", exc)
            self.error = exc
        finally:
            consumer.close()
            if tailer is not None:
                tailer.close()

    def _forget(self, consumer: Consumer, source: TopicPartitionKey) -> None:
        """Drop any restore of ``source`` in progress (cancelled or superseded)."""
        self._requests.pop(source, None)
        gone = [key for key, job in self._active.items() if job.source == source]
        for key in gone:
            del self._active[key]
        if gone:
            consumer.incremental_unassign([TopicPartition(t, p) for t, p in gone])

    def _end_offsets(self, tp: TopicPartition) -> tuple[int, int]:
        """(log start, log end offset) of a changelog partition."""

        def ask() -> tuple[int, int]:
            low, end = (
                self.admin.list_offsets({tp: s}, request_timeout=30)[tp].result(timeout=30).offset
                for s in (OffsetSpec.earliest(), OffsetSpec.latest())
            )
            if low < 0 or end < 0:
                raise KafkaUnavailable(f"no offsets known yet for {tp.topic}[{tp.partition}]")
            return low, end

        return retry_while_unavailable(
            ask, self.broker_timeout_s, self._halt, "changelog offsets", refresh=self._refresh
        )

    def _topic_id(self, topic: str) -> str:
        """The topic's id: a changelog deleted and created again gets a new one."""

        def ask() -> str:
            futures = self.admin.describe_topics(TopicCollection([topic]), request_timeout=30)
            return str(futures[topic].result(timeout=30).topic_id)

        return retry_while_unavailable(
            ask, self.broker_timeout_s, self._halt, "changelog id", refresh=self._refresh
        )

    def _refresh(self) -> None:
        self.admin.list_topics(timeout=30)

    def _stale(
        self, op: KeyedState, partition: int, start: int | None, low: int, end: int, cid: str
    ) -> str | None:
        """Why the local copy of a changelog partition cannot be resumed, if it cannot:
        older than what the log still holds (compacted or deleted), ahead of its end,
        or restored from another topic of the same name (deleted and recreated, or a
        new cluster under an old volume). Kafka Streams wipes such state too."""
        if start is None:
            return None
        recorded = self.store.changelog_id(op.name, partition)
        if recorded is not None and recorded != cid:
            return f"local state came from another changelog topic (id {recorded}, now {cid})"
        if start < low:
            return f"local state at offset {start} is older than the log start {low}"
        if start > end:
            return f"local state at offset {start} is ahead of the changelog's end {end}"
        return None

    def _begin(self, consumer: Consumer, source: TopicPartitionKey, token: int) -> None:
        now = time.monotonic()
        request = self._requests[source] = _Request(token, now, 0)
        topic, partition = source
        for op in self.operators:
            if op.input_topic != topic:
                continue
            tp = TopicPartition(op.changelog, partition)
            low, end = self._end_offsets(tp)
            changelog_id = self._topic_id(op.changelog)
            start = self.store.changelog_offset(op.name, partition)
            stale = self._stale(op, partition, start, low, end, changelog_id)
            if stale:
                log.warning("%s[%d]: %s; rebuilding it from the changelog",
                            op.changelog, partition, stale)  # fmt: skip
            if start is None or stale:
                self.store.wipe(op.name, op.states, partition)
                start = low
            self.store.restore([], op.name, partition, start, changelog_id)
            if start >= end:
                self.store.restore([], op.name, partition, max(start, end))
                continue
            self._active[(op.changelog, partition)] = _Changelog(
                op, partition, source, token, end, start, now
            )
            request.remaining += 1
            consumer.incremental_assign([TopicPartition(op.changelog, partition, start)])
        if not request.remaining:
            self._complete(source)

    def _replay(self, consumer: Consumer) -> None:
        """One batch of changelog records for every restore in progress."""
        writes: dict[tuple[str, int], list] = {}
        for m in consumer.consume(5000, 0.1):
            key = (m.topic(), m.partition())
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    # The read_committed end, past markers and aborted data: the end
                    # of the restore, unless an open transaction holds it back.
                    self._reached(key, m.offset())
                    continue
                if err.fatal():
                    raise KafkaException(err)
                log.warning("restore consumer: %s", err.str())  # e.g. a broker restarting
                continue
            state, skey = split_changelog_key(m.key())
            writes.setdefault(key, []).append((state, skey, m.value()))
            job = self._active.get(key)
            if job is not None:
                job.position = m.offset() + 1
        now = time.monotonic()
        for key, batch in writes.items():
            job = self._active.get(key)
            if job is None:
                continue  # cancelled meanwhile
            check_states(job.op, key[0], batch)
            self.store.restore(batch, job.op.name, job.partition, job.position)
            self.restored_records += len(batch)
            self._requests[job.source].records += len(batch)
            self.metrics.restored_records.labels(self.metrics.job, job.op.name).inc(len(batch))
            job.last_progress = now
        for key, job in list(self._active.items()):
            if job.position >= job.end:
                self.store.restore([], job.op.name, job.partition, max(job.position, job.end))
                del self._active[key]
                consumer.incremental_unassign([TopicPartition(*key)])
                request = self._requests[job.source]
                request.remaining -= 1
                if not request.remaining:
                    self._complete(job.source)
            elif now - job.last_progress > self.stall_timeout_s:
                raise RestoreFailed(
                    f"restore of {key[0]}[{key[1]}] made no progress for"
                    f" {self.stall_timeout_s:.0f}s at offset {job.position} (end {job.end});"
                    " an open transaction there that is never aborted holds it back"
                )

    def _reached(self, key: tuple[str, int], offset: int) -> None:
        """A changelog partition's read_committed end is ``offset`` for now."""
        job = self._active.get(key)
        if job is None:
            return
        if offset > job.position:
            job.position = offset
            job.last_progress = time.monotonic()
        if job.position < job.end and not job.blocked:
            job.blocked = True
            log.info(
                "%s[%d]: an open transaction at offset %d (a dead worker's, until the broker"
                " aborts it) holds the restore back from its end %d; waiting",
                key[0], key[1], job.position, job.end,
            )  # fmt: skip

    def _complete(self, source: TopicPartitionKey) -> None:
        request = self._requests.pop(source)
        elapsed = time.monotonic() - request.started
        self.metrics.state_restore.observe(elapsed)
        log.info(
            "restored %s[%d]: %d records in %.2fs", source[0], source[1], request.records, elapsed
        )
        self.done.put((source, request.token))

    def set_standby(self, partitions: set[TopicPartitionKey]) -> None:
        """Source partitions whose state to keep warm (standby replicas); thread-safe."""
        self.standby = frozenset(partitions)

    def _tail_standby(self, tailer: Consumer) -> None:
        """Apply the newest changelog records of partitions other workers own."""
        wanted = {
            (op.changelog, p)
            for topic, p in self.standby
            for op in self.operators
            if op.input_topic == topic
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
            check_states(op, topic, batch)
            self.store.restore(batch, op.name, p, ends[(topic, p)])
            self.standby_records += len(batch)

    def _standby_start(self, changelog: str, partition: int) -> int:
        offset = self.store.changelog_offset(self.by_changelog[changelog].name, partition)
        return OFFSET_BEGINNING if offset is None else offset
