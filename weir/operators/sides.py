"""The inputs ("sides") of an operator with several inputs: written to its topic,
read back in one order, with a watermark that is the minimum over the sides.

A `MultiInputOp` (a stream-table join, a window or interval join, broadcast
state) owns one topic, ``<group>.<name>.repartition``. Each side writes its
records there (`SideRepartitionOp`) as ``[side, key, value, origin, partitions]``
(below), keyed by the key
(so a key's records of every side meet in one partition, whatever partitioning
the inputs had), with the event time as the record timestamp. `MergedSourceOp`
reads the topic back and hands the operator elements ``(key, [side, value],
timestamp, offset)`` in the topic's order — an order fixed once committed, so a
replay after a failure sees the records of all sides exactly as before.

Every record also names where its side read it, its *origin* (the topic — as a
stable number — and partition the writer read, and how many partitions that
topic has), since the records of one side come from several upstream partitions,
interleaved as they were read: on a backlog one upstream partition may be read
seconds of event time ahead of another. Watermark of a partition of the topic
(`SideClocks`, rules in this order):

1. An origin's watermark is the largest event time of its records seen in the
   partition minus its side's ``max_out_of_orderness`` (its sources').
2. A side's watermark is the minimum over its origins — every partition of every
   topic its records came from (as far as any record has shown them), so a
   partition read behind the others holds its side back. An origin quiet for its
   side's ``idle_timeout`` stops holding it; one that has shown nothing in the
   partition holds it until ``idle_timeout`` — `ORIGIN_SETTLE_S` without one — has
   passed since the worker first read the partition: by then a backlog has shown
   every origin that writes here, and one that has not may never (when the inputs
   are partitioned like the operator's topic, each origin writes to one partition).
3. A side that has shown nothing in the partition holds it until its
   ``idle_timeout`` has passed since the worker first read the partition (forever
   without one); a side all of whose origins are idle no longer holds it: nothing
   more is coming from it, and it has reached the highest of its origins'
   watermarks (Flink's valve flushes the largest watermark across its channels
   when the last one goes idle).
4. The partition's watermark is the minimum over the sides not idle; with every
   side idle, the highest any of them reached (so a partition whose records all
   came in one burst still reports how far they went once its origins settle);
   with nothing seen, nothing is reported (the worker's tracker applies its own
   idleness, `weir.service.watermarks`). The rules are applied on every batch and
   on every clock tick of the slot, since origins and sides go idle with time alone.

The clocks are shared by the worker's slots (`SlotContext.shared`): when slots
share a partition, each sees only some keys, and a side one slot never sees may
well be in another slot's records. What the records of a partition showed — each
side's origins, their largest event times, their topics' partition counts — is
kept in the operator's state (`side_clocks_state`, `ShownTimes`): each slot writes
what its own records showed at its checkpoint barrier, so the state holds exactly
what the committed records showed. A partition's clocks start over from that state
whenever a slot is given it (`MergedSourceOp.own`) — after a restart, a rebalance,
a rollback (fresh slots): time seen in an aborted epoch, or by this worker before
another had the partition, is forgotten, and time the committed records showed is
not. Without it, a worker given a partition whose records were all read and
committed before it came would know no side there: the rows waiting in the
operator's state would wait for good. Restored origins count as last seen when the
partition was given (their idleness starts then).
"""

from __future__ import annotations

import threading
import zlib
from typing import Any

import orjson

from weir.operators.chain import Barrier, Batch, Operator, Row, SlotContext, _text, meta_factory
from weir.operators.formats import encode_key
from weir.operators.plan import MergedSource, Rekey, SideRepartition
from weir.state.epoch import EpochBuffer
from weir.state.layout import partition_key

Origin = int  # a topic's stable number << 16 | the partition (`origin_of`)
ORIGIN_SETTLE_S = 10.0  # how long an origin never seen holds a side without an idle_timeout


def side_clocks_state(operator: str) -> str:
    """The state holding what the sides of multi-input ``operator`` showed per partition."""
    return f"{operator}.sides"


def topic_number(topic: str) -> int:
    """A topic's stable number in origins: the same in every process and release."""
    return zlib.crc32(topic.encode())


def origin_of(topic: str, partition: int) -> Origin:
    return topic_number(topic) << 16 | partition


class SideClocks:
    """Per partition of one multi-input operator's topic, what each side's origins
    have shown (rules in the module doc)."""

    def __init__(self, clocks: tuple[tuple[float, float | None], ...]) -> None:
        self._sides = [(round(ooo * 1000), idle) for ooo, idle in clocks]
        self._lock = threading.Lock()
        self._since: dict[int, float] = {}  # partition -> first read (processing time, s)
        # (partition, side) -> origin -> [largest event time, last seen]
        self._origins: dict[tuple[int, int], dict[Origin, list]] = {}
        self._topics: dict[int, dict[int, int]] = {}  # side -> topic number -> partitions

    def observe(
        self,
        partition: int,
        newest: dict[tuple[int, Origin], int],
        topics: dict[tuple[int, int], int],
        now: float,
    ) -> int | None:
        """A batch of ``partition`` showed ``newest[(side, origin)]`` (the largest event
        time per side and origin) and ``topics[(side, topic number)]`` (the topics'
        partition counts); the partition's watermark by the rules, or None if it has
        none."""
        with self._lock:
            self._since.setdefault(partition, now)
            for (side, number), count in topics.items():
                self._topics.setdefault(side, {})[number] = count
            for (side, origin), ts in newest.items():
                seen = self._origins.setdefault((partition, side), {}).get(origin)
                if seen is None:
                    self._origins[(partition, side)][origin] = [ts, now]
                else:
                    seen[0] = max(seen[0], ts)
                    seen[1] = now
            return self._mark(partition, now)

    def restart(self, partition: int, now: float) -> None:
        """The worker owns ``partition`` anew (assigned, or back after a while): what it
        knew of it is stale, so it starts over from ``now`` (rules 2 and 3)."""
        with self._lock:
            self._since[partition] = now
            for side in range(len(self._sides)):
                self._origins.pop((partition, side), None)

    def mark(self, partition: int, now: float) -> int | None:
        """The partition's watermark at ``now`` with nothing new: origins and sides go
        idle with time."""
        with self._lock:
            return self._mark(partition, now) if partition in self._since else None

    def _mark(self, partition: int, now: float) -> int | None:
        since = self._since[partition]
        started = now - since  # how long this worker has read the partition
        marks, flushed = [], []
        for side, (ooo, idle) in enumerate(self._sides):
            seen = self._origins.get((partition, side))
            if not seen:  # Rule 3: nothing known of this side here yet
                if idle is not None and started > idle:
                    continue
                return None
            active, reached = [], []
            for number, count in self._topics[side].items():
                for p in range(count):
                    origin = seen.get(number << 16 | p)
                    if origin is None:  # Rule 2: never seen here
                        if started > (ORIGIN_SETTLE_S if idle is None else idle):
                            continue
                        return None
                    reached.append(origin[0] - ooo)  # Rule 1
                    if idle is not None and now - origin[1] > idle:
                        continue  # Rule 2: idle
                    active.append(origin[0] - ooo)
            if active:
                marks.append(min(active))  # Rule 2
            else:
                flushed.append(max(reached))  # Rule 3: every origin idle
        if marks:
            return min(marks)  # Rule 4
        return max(flushed) if flushed else None  # Rule 4: every side idle


class ShownTimes:
    """What records of one partition showed: the largest event time per (side, origin)
    and the partition count per (side, topic number) — `SideClocks.observe`'s input,
    kept in state as ``{"o": [[side, origin, time], ...], "n": [[side, topic, count], ...]}``."""

    __slots__ = ("newest", "topics")

    def __init__(self) -> None:
        self.newest: dict[tuple[int, Origin], int] = {}
        self.topics: dict[tuple[int, int], int] = {}

    def add(
        self, newest: dict[tuple[int, Origin], int], topics: dict[tuple[int, int], int]
    ) -> bool:
        """Take in what a batch (or another slot's entry) showed; True if anything rose."""
        rose = False
        for where, ts in newest.items():
            if ts > self.newest.get(where, ts - 1):
                self.newest[where] = ts
                rose = True
        for where, count in topics.items():
            if self.topics.get(where) != count:
                self.topics[where] = count
                rose = True
        return rose

    def encode(self) -> dict[str, list[list[int]]]:
        return {
            "o": [[side, origin, ts] for (side, origin), ts in self.newest.items()],
            "n": [[side, number, count] for (side, number), count in self.topics.items()],
        }

    def merge(self, stored: dict[str, list[list[int]]]) -> None:
        """Take in an entry of the state (`encode`)."""
        self.add(
            {(side, origin): ts for side, origin, ts in stored["o"]},
            {(side, number): count for side, number, count in stored["n"]},
        )


class RekeyOp(Operator):
    """Sets each element's key to ``fn(value)`` (``fn(value, meta)`` with meta), in place:
    the sides after it write the elements to their operators' topics by that key."""

    __slots__ = ("fn", "with_meta")

    def __init__(self, op: Rekey, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        self.fn = op.fn
        self.with_meta = op.with_meta

    def process(self, batch: Batch) -> None:
        fn = self.fn
        meta = meta_factory(batch) if self.with_meta else None
        out: list[Any] = []
        append = out.append
        elems = batch.elems
        i, n = 0, len(elems)
        while i < n:
            try:
                for i in range(i, n):  # noqa: B020 - resumes after a failed record
                    k, v, t, o = elems[i]
                    append((fn(v) if meta is None else fn(v, meta(k, t, o)), v, t, o))
                break
            except Exception as exc:
                self.ctx.fail(self.name, "key", batch, elems[i], exc)
                i += 1
        if out and self.out is not None:
            self.out.process(Batch(batch.topic, batch.partition, out, batch.headers))


class SideRepartitionOp(Operator):
    """Writes one side's elements to its operator's topic: ``[side, key, value, origin,
    partitions]`` keyed by ``fn(value)`` (or the element's key; a record key as UTF-8
    text), with the event time as the record timestamp. A broadcast side writes them
    with a None key, without a Kafka key, to every partition."""

    __slots__ = ("broadcast", "fn", "side", "topic", "with_meta")

    def __init__(self, op: SideRepartition, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        self.fn = op.fn
        self.topic = op.topic
        self.side = op.side
        self.with_meta = op.with_meta
        self.broadcast = op.broadcast

    def process(self, batch: Batch) -> None:
        if self.broadcast:
            self._everywhere(batch)
            return
        fn, dumps, side = self.fn, orjson.dumps, self.side
        meta = meta_factory(batch) if self.with_meta else None
        origin = origin_of(batch.topic, batch.partition)
        count = self.ctx.partitions(batch.topic)
        rows: list[Row] = []
        append = rows.append
        elems = batch.elems
        i, n = 0, len(elems)
        while i < n:
            try:
                for i in range(i, n):  # noqa: B020 - resumes after a failed record
                    k, v, t, o = elems[i]
                    if fn is None:
                        key = _text(k) if isinstance(k, bytes) else k
                    else:
                        key = fn(v) if meta is None else fn(v, meta(k, t, o))
                    if key is None:
                        raise ValueError("a record without a key cannot be joined")
                    append((encode_key(key), dumps([side, key, v, origin, count]), o, t))
                break
            except Exception as exc:
                self.ctx.fail(self.name, "key", batch, elems[i], exc)
                i += 1
        if rows:
            self.ctx.produce(self.topic, rows, batch)

    def _everywhere(self, batch: Batch) -> None:
        origin = origin_of(batch.topic, batch.partition)
        count = self.ctx.partitions(batch.topic)
        rows: list[Row] = []
        for elem in batch.elems:
            _, v, t, o = elem
            try:
                rows.append((None, orjson.dumps([self.side, None, v, origin, count]), o, t))
            except Exception as exc:
                self.ctx.fail(self.name, "serialize", batch, elem, exc)
        if rows:
            for p in range(self.ctx.partitions(self.topic)):
                self.ctx.produce(self.topic, rows, batch, p)

    def on_barrier(self, barrier: Barrier) -> None:
        pass


class MergedSourceOp(Operator):
    """Reads a multi-input operator's topic: elements ``(key, [side, value], timestamp,
    offset)`` in the topic's order; reports the partition's watermark and keeps what
    its records showed in state (module doc)."""

    __slots__ = (
        "buffer", "changed", "clocks", "keep_headers", "owned", "shown", "slot_key", "state",
        "topic", "track_time",
    )  # fmt: skip

    def __init__(self, op: MergedSource, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        self.track_time = False  # set when operators with timers follow (they do)
        self.keep_headers = False  # unused: what a multi-input operator emits has none
        self.clocks: SideClocks = ctx.shared.setdefault(op.name, SideClocks(op.clocks))
        self.topic = op.topic
        self.state = op.clock_state
        self.buffer: EpochBuffer = ctx.state
        self.owned: set[int] = set()
        self.shown: dict[int, ShownTimes] = {}  # per owned partition: committed and since
        self.changed: set[int] = set()  # partitions whose times rose since the last barrier
        self.slot_key = b""  # this slot's entry among those of slots sharing a partition

    def own(self, partitions: set[int], key_groups: range | None) -> None:
        """The partitions (and, when slots share partitions, the key groups) this slot
        owns now: the clocks of new ones start over from what the committed records
        showed (module doc)."""
        now = self.ctx.now_ms() / 1000
        self.slot_key = b"" if key_groups is None else key_groups.start.to_bytes(2, "big")
        for p in self.owned - partitions:
            self.shown.pop(p, None)
            self.changed.discard(p)
        for p in partitions - self.owned:
            shown = self.shown[p] = ShownTimes()
            for _, stored in self.buffer.scan(self.state, p):
                shown.merge(stored)
            self.clocks.restart(p, now)
            if shown.newest:
                self.clocks.observe(p, shown.newest, shown.topics, now)
        self.owned = set(partitions)

    def tick(self) -> None:
        """Time passed (the slot's clock tick): sides may have gone idle meanwhile, so the
        partitions' watermarks may move with no new record (which `observe_time` is
        told, so the partition's own idleness is not reset) — in every partition owned,
        read since or not: one whose records were all committed before it came here
        has its rows waiting for time from the restored clocks alone."""
        if not self.track_time:
            return
        now = self.ctx.now_ms() / 1000
        for p in self.owned:
            mark = self.clocks.mark(p, now)
            if mark is not None:
                self.ctx.observe_time(self.topic, p, mark, seen=False)

    def process(self, batch: Batch) -> None:
        elems: list[Any] = []
        newest: dict[tuple[int, int], int] = {}
        topics: dict[tuple[int, int], int] = {}
        for m in batch.elems:
            try:
                side, k, v, origin, count = orjson.loads(m.value())
            except Exception as exc:
                self.ctx.fail(self.name, "decode", batch, (m.key(), m.value(), 0, m.offset()), exc)
                continue
            ts = m.timestamp()[1]
            where = (side, origin)
            if ts > newest.get(where, ts - 1):
                newest[where] = ts
                topics[(side, origin >> 16)] = count
            elems.append((k, [side, v], ts, m.offset()))
        if self.track_time and newest:
            p = batch.partition
            shown = self.shown.get(p)
            if shown is None:
                shown = self.shown[p] = ShownTimes()
            if shown.add(newest, topics):
                self.changed.add(p)
            now = self.ctx.now_ms() / 1000
            mark = self.clocks.observe(p, newest, topics, now)
            if mark is not None:
                self.ctx.observe_time(batch.topic, p, mark)
        if elems and self.out is not None:
            self.out.process(Batch(batch.topic, batch.partition, elems))

    def on_barrier(self, barrier: Barrier) -> None:
        """The epoch ends: what this slot's records showed in the partitions whose times
        rose goes into its state, to be committed with the records' offsets."""
        for p in self.changed:
            self.buffer.put(self.state, partition_key(p) + self.slot_key, self.shown[p].encode())
        self.changed.clear()
        super().on_barrier(barrier)
