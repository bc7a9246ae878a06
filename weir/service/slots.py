"""Slot threads: each runs one instance of the job's operator chain.

A slot takes items from its `Inbox` — batches from the fetcher, batches from
other slots' exchanges, barriers, and releases — and pushes batches through its
chain. The only locks on the way are the inbox's, taken once per batch.

Barrier alignment (Flink's aligned checkpoints): an input *target* (the source
heads, the operator after an exchange, or a union's chain) has one channel per
sender (the fetcher; every slot; each of the union's inputs). When a
channel delivers barrier N, further items from that channel are held back until
every channel of the target has delivered N; then the barrier passes the
target's chain and the held items are replayed. When all of a slot's targets
have passed N, the slot acknowledges N to the checkpoint coordinator.

Outputs produced after a target passed barrier N belong to the next epoch:
they are held in the slot until the coordinator has committed N and sends
`Release`, so nothing after the barrier can enter checkpoint N's transaction
(exactly-once) or its flush (at-least-once).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from operator import itemgetter
from types import FrameType
from typing import TYPE_CHECKING, Any

import orjson
from confluent_kafka import KafkaException, Producer

from weir.operators.build import SlotChain, build_chain
from weir.operators.chain import Barrier, Batch, DirectOutput, Operator, Row
from weir.operators.fused import FusedChain
from weir.operators.physical import PlanNode
from weir.operators.plan import ErrorPolicy
from weir.operators.timers import NO_TIME
from weir.service.exceptions import WorkerFailed
from weir.service.metrics import Metrics
from weir.state.epoch import EpochBuffer
from weir.state.store import Write

if TYPE_CHECKING:
    from weir.service.changelog import Changelogs
    from weir.service.topics import TopicLimits

log = logging.getLogger(__name__)

SOURCES = -1  # target id of the source heads; their one channel is the fetcher
DLQ_VALUE_LIMIT = 65536  # a dead letter keeps at most this much of the record's value
CHUNK_S = 0.05  # a batch is processed in chunks of about this much work
PROBE_RECORDS = 8  # chunk size until the cost per record is known
WARMUP_RECORDS = 1000  # records after which an input without a cost is taken for a rare one
FETCHER = -1
# Producer.produce is called positionally — (topic, value, key, partition, on_delivery,
# callback, timestamp, headers) — since parsing keyword arguments costs about as much
# as the rest of the call (measured: 4.3 vs 2.5 µs a record). -1 is librdkafka's
# RD_KAFKA_PARTITION_UA (the partitioner decides), None callbacks the producer's own,
# timestamp 0 the producer's clock.
ANY_PARTITION = -1
_KEY, _VALUE, _STAMP = itemgetter(0), itemgetter(1), itemgetter(3)  # of an output row
INF = float("inf")


def wall_clock_ms() -> int:
    """Processing time: the wall clock, epoch ms."""
    return int(time.time() * 1000)


class Release:
    """Checkpoint ``id`` is committed: held outputs may go out now."""

    __slots__ = ("id",)

    def __init__(self, checkpoint_id: int) -> None:
        self.id = checkpoint_id


class Stop:
    """Ends the slot thread."""


class Watermark:
    """Time moved: the watermark of each input topic is ``values[topic]`` and the wall
    clock ``now`` (epoch ms): fire due windows and timers."""

    __slots__ = ("now", "values")

    def __init__(self, values: dict[str, int], now: int) -> None:
        self.values = values
        self.now = now


class Ownership:
    """What keyed state this slot owns now, per source topic: partitions and, when
    slots share partitions, the key-group range (None = whole partitions)."""

    __slots__ = ("key_groups", "partitions")

    def __init__(self, partitions: dict[str, set[int]], key_groups: range | None) -> None:
        self.partitions = partitions
        self.key_groups = key_groups


class Inbox:
    """A slot's input queue: FIFO per channel, counting the records and bytes it holds
    (for backpressure).

    Two lanes: what the fetcher sends (batches, barriers, and the messages to all
    slots), and what arrives from exchanges. The fetcher's lane is served first: its
    records are cheap to take through the source segment, and they are what every
    slot's exchange input waits for, so they must not queue behind this slot's slow
    work after an exchange. Only each channel's order matters (a barrier splits a
    channel's records into before and after), so no order across channels is lost.

    Unbounded so that slots never block on each other (exchanges go both ways);
    memory is bounded by the fetcher, which holds off or pauses partitions while a
    slot's queue is over its bounds (`weir.service.flow`).
    """

    def __init__(self) -> None:
        self._fetched: deque[tuple[int, int, Any, int, int]] = deque()
        self._exchanged: deque[tuple[int, int, Any, int, int]] = deque()
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # an item was queued
        self._went_idle = threading.Condition(lock)  # the slot thread waits on nothing
        self.records = 0
        self.bytes = 0
        self.waiting: dict[int, int] = {}  # records per target: their costs differ
        self.idle = False  # the slot thread waits in `get`

    def idle_and_empty(self, timeout: float = 0.0) -> bool:
        """Is the slot thread waiting for an item, with none queued — or, within
        ``timeout`` seconds, does it come to that?"""
        with self._cond:
            return self._went_idle.wait_for(
                lambda: self.idle and not (self._fetched or self._exchanged), timeout
            )

    def __len__(self) -> int:
        return len(self._fetched) + len(self._exchanged)

    def put(self, target: int, channel: int, payload: Any, records: int = 0, size: int = 0) -> None:
        """Queue ``payload`` for ``target`` from ``channel``. An exchange's `Barrier` goes
        right behind the last item queued from its own channel for its target (first when
        there is none): only that channel's records must precede it, so it need not wait
        behind other channels' work — as if each channel had its own queue, as in Flink."""
        item = (target, channel, payload, records, size)
        with self._cond:
            if channel == FETCHER:
                self._fetched.append(item)
            elif isinstance(payload, Barrier):
                items = self._exchanged
                at = len(items)
                for queued in reversed(items):
                    if queued[0] == target and queued[1] == channel:
                        break
                    at -= 1
                items.insert(at, item)
            else:
                self._exchanged.append(item)
            self.records += records
            self.bytes += size
            if records:
                self.waiting[target] = self.waiting.get(target, 0) + records
            self._cond.notify()

    def stop(self, item: Any) -> None:
        """Drop everything queued and put ``item`` (a `Stop`) first."""
        with self._cond:
            self._fetched.clear()
            self._exchanged.clear()
            self.records = self.bytes = 0
            self.waiting = {}
            self._fetched.append((SOURCES, FETCHER, item, 0, 0))
            self._cond.notify()

    def get(self) -> tuple[int, int, Any]:
        with self._cond:
            while not (self._fetched or self._exchanged):
                self.idle = True
                self._went_idle.notify()
                self._cond.wait()
            self.idle = False
            lane = self._fetched or self._exchanged
            target, channel, payload, records, size = lane.popleft()
            self.records -= records
            self.bytes -= size
            if records:
                self.waiting[target] -= records
            return target, channel, payload


class SlotStats:
    """Per-slot counters, read by /status, the metrics sampler and the history
    (`weir.service.history`).

    ``tasks`` counts, per task — the operators chained from one input: a source topic
    (keyed by the topic) or an exchange (keyed by the exchange's operator id, as
    `weir.operators.build.SlotChain.inputs`) — ``[records in, seconds busy]`` since the slot
    started; ``produced`` the records written per topic. Both grow once per chunk.
    ``costs`` is, per input target (`SOURCES` or an exchange's operator id), the seconds
    per record as a moving average: a slot's inputs may differ in cost by a thousand
    times (decoding and keying before an exchange, a slow function after it), so the
    work waiting in its inbox and its chunk sizes are reckoned per input.
    """

    __slots__ = ("batches", "busy_s", "costs", "failed", "produced", "records", "started", "tasks")

    def __init__(self) -> None:
        self.records = 0
        self.batches = 0
        self.failed = 0
        self.busy_s = 0.0
        self.costs: dict[int, float] = {}
        self.started = time.monotonic()
        self.tasks: dict[str | int, list[float]] = {}
        self.produced: dict[str, int] = {}


class Slot(threading.Thread):
    """One slot thread; implements `weir.operators.chain.SlotContext` for its operators."""

    def __init__(
        self,
        index: int,
        slots: list[Slot],
        sources: tuple[PlanNode, ...],
        max_key_groups: int,
        producer: Producer,
        policy: ErrorPolicy,
        dlq_topic: str,
        metrics: Metrics,
        on_ack: Callable[[int, int, list[Write]], None],
        on_fatal: Callable[[BaseException], None],
        state: EpochBuffer | None = None,
        changelogs: Changelogs | None = None,
        limits: dict[str, TopicLimits] | None = None,
        registry: Mapping[str, str] | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        shared: dict[str, Any] | None = None,
        partition_counts: dict[str, int] | None = None,
    ) -> None:
        super().__init__(name=f"weir-slot-{index}", daemon=True)
        self.slot = index
        self.clock = clock  # processing time, epoch ms (the job tester sets its own)
        self.peers = slots  # every slot of the worker, this one included
        self.inbox = Inbox()
        self.producer = producer
        self.policy = policy
        self.dlq_topic = dlq_topic
        self.metrics = metrics
        self.on_ack = on_ack
        self.on_fatal = on_fatal
        self.stats = SlotStats()
        self.state = state
        self.changelogs = changelogs
        self.limits = limits or {}  # topic -> what its broker accepts
        self.registry = registry  # schema registry client settings, for the job's serdes
        self.shared = {} if shared is None else shared  # the same dict in every slot
        self.partition_counts = partition_counts or {}  # of the topics the job reads
        self.epoch_writes: list[Write] = []
        self._chain_args = (sources, max_key_groups)
        self.chain: SlotChain | None = None
        self.current = SOURCES
        self.passed: set[int] = set()  # targets past the in-flight barrier
        # (topic, key, value, headers, timestamp, partition or None)
        self.held: list[tuple[str, bytes | None, bytes, Any, int, int | None]] = []
        self.held_bytes = 0
        self.record_bytes = 0  # bytes per record of the fetched batches (set by the fetcher)
        self.arrived: dict[int, set[int]] = {}
        self.stash: dict[int, list[tuple[int, Any]]] = {}
        self.replay: deque[tuple[int, int, Any]] = deque()
        self.blocked: set[tuple[int, int]] = set()
        self.max_ts: dict[tuple[str, int], int] = {}  # event time seen per partition
        self.last_seen: dict[tuple[str, int], float] = {}  # when, in monotonic seconds
        self.taken: dict[tuple[str, int], int] = {}  # fetched records processed, per partition
        self.discard = False  # set on rollback: a slot that outlives it must not produce
        # the chunk in process, since when, and the thread processing it (this one, or
        # the fetch thread: `weir.service.inline`)
        self.busy: tuple[Batch, list, float, int] | None = None
        self._out_counters: dict[str, Any] = {}

    @property
    def slots(self) -> int:
        return len(self.peers)

    @property
    def queued(self) -> int:
        """Records waiting in the inbox (flow control reads it)."""
        return self.inbox.records

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in the inbox plus outputs held for the next commit."""
        return self.inbox.bytes + self.held_bytes

    @property
    def backlog(self) -> list[tuple[int, float]]:
        """Per input with records waiting: ``(records, seconds per record)``, the cost
        0.0 while unknown (flow control bounds the work queued by it). Fetched records
        weigh `record_cost`: the work they cause after an exchange is still ahead."""
        costs = self.stats.costs
        return [
            (n, self.record_cost if t == SOURCES else costs.get(t, 0.0))
            for t, n in list(self.inbox.waiting.items())
            if n > 0
        ]

    @property
    def record_cost(self) -> float:
        """Seconds of this slot's work one record fetched into the worker may cause: the
        sum of its inputs' costs (a record may pass each input once). 0.0 (unknown)
        until every input has a cost, so that a fresh slot is not flooded before the
        work after its exchanges shows; an input that got no records while the slot
        took its first `WARMUP_RECORDS` is a rarely used branch and is left out."""
        chain = self.chain
        if chain is None:
            return 0.0
        costs, warm = self.stats.costs, self.stats.records >= WARMUP_RECORDS
        total = 0.0
        for target in (SOURCES, *chain.inputs):
            cost = costs.get(target, 0.0)
            if not cost and not warm:
                return 0.0
            total += cost
        return total

    # -- SlotContext ---------------------------------------------------------
    def produce(
        self, topic: str, rows: list[Row], batch: Batch, partition: int | None = None
    ) -> None:
        counter = self._out_counters.get(topic)
        if counter is None:
            counter = self._out_counters[topic] = self.metrics.records_out.labels(
                self.metrics.job, topic
            )
        limits = self.limits.get(topic)
        if limits is not None:
            rows = self._accepted(topic, rows, batch, limits)
        counter.inc(len(rows))
        produced = self.stats.produced
        produced[topic] = produced.get(topic, 0) + len(rows)
        if self.discard or not rows:
            return
        with_headers = len(rows[0]) == 5  # a sink with headers=, or headers forwarded
        if self.current in self.passed:
            # Exact-size copies: an orjson result keeps its ~4 KB build buffer.
            if with_headers:
                held = [(topic, k, bytes(memoryview(v)), h, t, partition) for k, v, _, t, h in rows]
            else:
                held = [(topic, k, bytes(memoryview(v)), None, t, partition) for k, v, _, t in rows]
            self.held.extend(held)
            self.held_bytes += sum(len(h[2]) for h in held)
            return
        produce, poll = self.producer.produce, self.producer.poll
        where = ANY_PARTITION if partition is None else partition
        i, n = 0, len(rows)
        while i < n:
            try:  # positional arguments: see `ANY_PARTITION`
                if with_headers:
                    for i in range(i, n):  # noqa: B020 - resumes after a full queue
                        k, v, _, t, h = rows[i]
                        produce(topic, v, k, where, None, None, t if t > 0 else 0, h)
                else:
                    for i in range(i, n):  # noqa: B020
                        k, v, _, t = rows[i]
                        produce(topic, v, k, where, None, None, t if t > 0 else 0)
                break
            except BufferError:
                poll(0.05)  # librdkafka's queue is full: let it drain, then resume at row i
            except KafkaException as exc:  # refused locally, e.g. larger than message.max.bytes
                k, v, offset = rows[i][:3]
                self.fail(f"sink-{topic}", "produce", batch, (k, v, 0, offset), exc)
                i += 1

    def direct(self, topic: str) -> DirectOutput | None:
        """How a fused chain produces its outputs to ``topic`` one by one
        (`weir.operators.fused`): to the producer, or into the outputs held for the next
        commit when this target passed a barrier; with what the topic accepts now (its
        `TopicLimits`), so that only a record outside the bounds asks ``refusal``. None
        — the staged path drops them — when outputs are dropped (after a rollback)."""
        if self.discard:
            return None
        lim = self.limits.get(topic)
        bounds, refusal = (INF, -INF, INF), _accepts_all
        if lim is not None:
            now = time.time() * 1000
            bounds = lim.bounds(now)
            refusal = partial(_refusal, lim, now)
        counter = self._out_counters.get(topic)
        if counter is None:
            counter = self._out_counters[topic] = self.metrics.records_out.labels(
                self.metrics.job, topic
            )
        produced = self.stats.produced

        def done(n: int) -> None:
            counter.inc(n)
            produced[topic] = produced.get(topic, 0) + n

        producer = self.producer
        produce = self._hold if self.current in self.passed else producer.produce
        return DirectOutput(produce, producer.poll, KafkaException, *bounds, refusal, done)

    def _hold(
        self, topic: str, value: bytes, key: bytes | None, _p: int, _d: None, _c: None, ts: int
    ) -> None:
        """`direct`'s ``produce`` after a barrier: the output waits for the commit, as an
        exact-size copy (an orjson result keeps its ~4 KB build buffer)."""
        value = bytes(memoryview(value))
        self.held.append((topic, key, value, None, ts, None))
        self.held_bytes += len(value)

    def _accepted(self, topic: str, rows: list[Row], batch: Batch, lim: TopicLimits) -> list[Row]:
        """Rows the topic's broker accepts; a record it would refuse (too large, a
        timestamp out of its range) goes to the dead-letter topic instead of failing
        the whole transaction. The common case costs no Python work per row: the
        largest key and value fit together, and the timestamps (0: stamped by the
        producer) lie within the range — each found by map/itemgetter, in C."""
        now = time.time() * 1000
        big, low, high = lim.bounds(now)
        fits = big == INF or (
            max(map(len, map(_VALUE, rows)), default=0)
            + max(map(len, filter(None, map(_KEY, rows))), default=0)
            <= big
        )
        if fits and (high == INF or max(map(_STAMP, rows), default=0) <= high):
            if low == -INF:
                return rows
            earliest = min(map(_STAMP, rows), default=0)
            if earliest >= low or (
                earliest <= 0 and min(filter(None, map(_STAMP, rows)), default=low) >= low
            ):
                return rows
        kept = []
        for row in rows:
            k, v, offset, t = row[:4]
            refusal = lim.refusal(k, v, t, now)
            if refusal is None:
                kept.append(row)
                continue
            reason = "too-large" if refusal.startswith("record of") else "timestamp"
            self.fail(f"sink-{topic}", reason, batch, (k, v, t, offset), ValueError(refusal))
        return kept

    def fail(self, operator: str, reason: str, batch: Batch, elem: Any, exc: BaseException) -> None:
        self.stats.failed += 1
        self.metrics.records_failed.labels(self.metrics.job, operator, reason).inc()
        error = f"{type(exc).__name__}: {exc}"
        if self.policy == ErrorPolicy.FAIL:
            raise WorkerFailed(
                f"operator {operator!r} failed on {batch.topic}[{batch.partition}]@{elem[3]}"
                f" ({reason}): {error}"
            )
        log.warning(
            "record %s[%d]@%s failed in %s (%s): %s",
            batch.topic,
            batch.partition,
            elem[3],
            operator,
            reason,
            error,
        )
        if self.policy == ErrorPolicy.SKIP:
            return
        key_bytes, value = elem[0], elem[1]
        if not isinstance(value, bytes | None):
            try:
                value = orjson.dumps(value)
            except TypeError:
                value = repr(value).encode()
        if not isinstance(key_bytes, bytes | None):
            key_bytes = repr(key_bytes).encode()
        dlq = self.limits.get(self.dlq_topic)
        dlq_limit = dlq.max_bytes if dlq and dlq.max_bytes else DLQ_VALUE_LIMIT
        if value is not None and len(value) > min(DLQ_VALUE_LIMIT, dlq_limit // 2):
            error += f" (value truncated from {len(value)} bytes)"
            value = value[: min(DLQ_VALUE_LIMIT, dlq_limit // 2)]
        headers = [
            ("weir.error", error.encode()),
            ("weir.reason", reason.encode()),
            ("weir.operator", operator.encode()),
            ("weir.source.topic", batch.topic.encode()),
            ("weir.source.partition", str(batch.partition).encode()),
            ("weir.source.offset", str(elem[3]).encode()),
        ]
        if self.current in self.passed:
            self.held.append((self.dlq_topic, key_bytes, value, headers, 0, None))
            self.held_bytes += len(value or b"")
        else:
            self._produce_one(self.dlq_topic, key_bytes, value, headers)

    def send(
        self, slot: int, target: int, item: Batch | Barrier, channel: int | None = None
    ) -> None:
        """To a slot's inbox (another's, or this one's for a union), on ``channel``
        (default: this slot's number); a batch's bytes are estimated from the size of
        the records this slot was fetched (decoded elements have no byte size)."""
        records = len(item.elems) if isinstance(item, Batch) else 0
        channel = self.slot if channel is None else channel
        self.peers[slot].inbox.put(target, channel, item, records, records * self.record_bytes)

    def now_ms(self) -> int:
        return self.clock()

    def partitions(self, topic: str) -> int:
        return self.partition_counts[topic]

    def late(self, operator: str, count: int, reason: str = "late") -> None:
        self.metrics.records_late.labels(self.metrics.job, operator, reason).inc(count)

    def observe_time(
        self, topic: str, partition: int, max_timestamp: int, seen: bool = True
    ) -> None:
        tp = (topic, partition)
        if max_timestamp > self.max_ts.get(tp, max_timestamp - 1):
            self.max_ts[tp] = max_timestamp
        if seen:
            self.last_seen[tp] = time.monotonic()

    def stuck_in(self) -> str | None:
        """Where this slot's thread is now, for a checkpoint that waits on it: the
        operator it is in (from the thread's stack: no cost on the hot path), the
        record's topic, partition and offset, and for how long. None when idle."""
        busy = self.busy
        if busy is None:
            return None
        batch, chunk, since, thread = busy
        operator, offset = _operator_in(sys._current_frames().get(thread))
        if offset is None:
            first, last = _offset(chunk[0]), _offset(chunk[-1])
            offset = first if first == last else f"{first}..{last}"
        seconds = time.perf_counter() - since
        return (
            f"slot {self.slot} has been in operator {operator or '?'!r} for {seconds:.1f}s"
            f" on record {batch.topic}[{batch.partition}]@{offset}"
        )

    # -- thread ------------------------------------------------------------
    def run(self) -> None:
        try:
            sources, max_key_groups = self._chain_args
            self.chain = build_chain(sources, self, max_key_groups)
            self.process_inbox()
        except BaseException as exc:  # reported to the worker, which stops or restarts
            self.on_fatal(exc)

    def process_inbox(self) -> None:
        """The slot's loop: take items from the inbox and act on them until a `Stop`.
        The thread runs it; `weir.testing` runs it in the caller's thread, with an
        inbox that answers `Stop` once it is empty."""
        inbox, replay = self.inbox, self.replay
        while True:
            target, channel, payload = replay.popleft() if replay else inbox.get()
            if (target, channel) in self.blocked:
                self.stash.setdefault(target, []).append((channel, payload))
                continue
            if isinstance(payload, Batch):
                self.process_batch(target, payload)
            elif isinstance(payload, Barrier):
                self._on_barrier(target, channel, payload)
            elif isinstance(payload, Release):
                self._release()
            elif isinstance(payload, Watermark):
                self.current = SOURCES  # windows run in the source segment
                for merged in self.chain.clocks:
                    merged.tick()  # sides of multi-input operators can go idle meanwhile
                values = payload.values
                for window in self.chain.windows:  # each with the watermark of its input
                    window.advance(values.get(window.topic, NO_TIME), payload.now)
            elif isinstance(payload, Ownership):
                for merged in self.chain.clocks:
                    merged.own(payload.partitions.get(merged.topic, set()), payload.key_groups)
                for window in self.chain.windows:
                    window.own(payload.partitions.get(window.topic, set()), payload.key_groups)
            elif isinstance(payload, Stop):
                return

    def process_batch(self, target: int, payload: Batch) -> None:
        """Take one batch through the chain's input ``target``, in chunks. The slot
        thread calls it, or the fetch thread while this one waits (`weir.service.inline`)."""
        stats, thread = self.stats, threading.get_ident()
        costs, clock = stats.costs, time.perf_counter
        self.current = target
        if target == SOURCES:
            head, task = self.chain.sources[payload.topic], payload.topic
        else:
            head, task = self.chain.inputs[target], target
        counts = stats.tasks.get(task)
        if counts is None:
            counts = stats.tasks[task] = [0, 0.0]
        elems = payload.elems
        # Slow functions get the batch in chunks of about CHUNK_S of work, so
        # outputs flow steadily and per-batch bookkeeping stays current.
        cost = costs.get(target, 0.0)
        step = max(1, int(CHUNK_S / cost)) if cost else PROBE_RECORDS
        for i in range(0, len(elems), step):
            part = elems if step >= len(elems) else elems[i : i + step]
            started = clock()
            self.busy = (payload, part, started, thread)
            head.process(Batch(payload.topic, payload.partition, part))
            self.busy = None
            took = clock() - started
            stats.busy_s += took
            stats.records += len(part)
            counts[0] += len(part)
            counts[1] += took
            stats.batches += 1
            per = took / len(part)
            costs[target] = cost = 0.8 * cost + 0.2 * per if cost else per
        if target == SOURCES:
            tp = (payload.topic, payload.partition)
            self.taken[tp] = self.taken.get(tp, 0) + len(elems)

    def _channels(self, target: int) -> int:
        """The fetcher feeds the sources; every slot an exchange's target; each of its
        inputs a union's."""
        return 1 if target == SOURCES else self.chain.fan_in.get(target, self.slots)

    def _on_barrier(self, target: int, channel: int, barrier: Barrier) -> None:
        arrived = self.arrived.setdefault(target, set())
        arrived.add(channel)
        if len(arrived) < self._channels(target):
            self.blocked.add((target, channel))  # aligning: held until the others deliver
            return
        del self.arrived[target]
        self.blocked -= {(target, c) for c in arrived}
        self.current = target
        if target == SOURCES:
            for head in self.chain.sources.values():
                head.on_barrier(barrier)
            self.epoch_writes = self._checkpoint_state()
        else:
            self.chain.inputs[target].on_barrier(barrier)
        self.passed.add(target)
        held_back = self.stash.pop(target, [])
        self.replay.extendleft(reversed([(target, c, p) for c, p in held_back]))
        if len(self.passed) == 1 + len(self.chain.inputs) and not self.discard:
            writes, self.epoch_writes = self.epoch_writes, []
            self.on_ack(self.slot, barrier.id, writes)

    def _checkpoint_state(self) -> list[Write]:
        """End the state epoch: freeze its writes and send them to the changelogs.

        Stateful operators run before any exchange, so the source target's barrier
        is where their epoch ends. The changelog records go out now, before the
        acknowledgement, so they are part of this checkpoint's transaction.
        """
        if self.state is None:
            return []
        writes = self.state.freeze()
        for topic, key, data, partition in self.changelogs.records(writes):
            self._produce_one(topic, key, data, None, partition)
        return writes

    def _release(self) -> None:
        """The checkpoint committed: the outputs held since its barrier go out, in order,
        in one tight loop (a whole interval's output may be held)."""
        self.passed.clear()
        held, self.held, self.held_bytes = self.held, [], 0
        produce, poll = self.producer.produce, self.producer.poll
        i, n = 0, len(held)
        while i < n and not self.discard:
            try:
                for i in range(i, n):  # noqa: B020 - resumes after a full queue
                    topic, k, v, h, t, p = held[i]
                    where = ANY_PARTITION if p is None else p
                    produce(topic, v, k, where, None, None, t if t > 0 else 0, h)
                break
            except BufferError:
                poll(0.05)  # librdkafka's queue is full: let it drain, then resume at i

    def _produce_one(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Any,
        partition: int | None = None,
        timestamp: int = 0,
    ) -> None:
        where = ANY_PARTITION if partition is None else partition
        stamp = timestamp if timestamp > 0 else 0
        while not self.discard:
            try:
                self.producer.produce(topic, value, key, where, None, None, stamp, headers)
                return
            except BufferError:
                self.producer.poll(0.05)


def _accepts_all(key: bytes | None, value: bytes, timestamp: int) -> None:
    return None


def _refusal(lim: TopicLimits, now: float, key: bytes | None, value: bytes, ts: int) -> str | None:
    return lim.refusal(key, value, ts, now)


def _offset(elem: Any) -> int:
    """The source offset of a chunk entry: a Kafka message or an element tuple."""
    return elem[3] if isinstance(elem, tuple) else elem.offset()


def _operator_in(frame: FrameType | None) -> tuple[str | None, int | None]:
    """The innermost operator on a thread's stack, and the offset of the record it is
    on when its frame shows it (operators unpack ``k, v, t, o = elems[i]``; a fused
    chain names the operator it runs in ``step`` and holds the message in ``m``)."""
    while frame is not None:
        local = frame.f_locals
        owner = local.get("self")
        if isinstance(owner, Operator):
            offset = local.get("o")
            if isinstance(owner, FusedChain):
                message = local.get("m")
                offset = None if message is None else message.offset()
                return local.get("step") or owner.name, offset
            return owner.name, offset if isinstance(offset, int) else None
        frame = frame.f_back
    return None, None
