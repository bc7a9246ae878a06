"""The inputs ("sides") of an operator with several inputs: written to its topic,
read back in one order, with a watermark that is the minimum over the sides.

A `MultiInputOp` (a stream-table join, a window or interval join, broadcast
state) owns one topic, ``<group>.<name>.repartition``. Each side writes its
records there (`SideRepartitionOp`) as ``[side, key, value]``, keyed by the key
(so a key's records of every side meet in one partition, whatever partitioning
the inputs had), with the event time as the record timestamp. `MergedSourceOp`
reads the topic back and hands the operator elements ``(key, [side, value],
timestamp, offset)`` in the topic's order — an order fixed once committed, so a
replay after a failure sees the records of all sides exactly as before.

Watermark of a partition of the topic (`SideClocks`, rules in this order):

1. Each side's watermark is the largest event time of that side seen in the
   partition minus the side's ``max_out_of_orderness`` (its sources').
2. A side that has shown nothing in the partition holds it back (nothing is
   known of it) until the side's ``idle_timeout`` has passed since the worker
   first read the partition; a side that showed records but nothing new for its
   ``idle_timeout`` no longer holds it back.
3. The partition's watermark is the minimum over the sides left; with none
   left, nothing is reported and the partition is idle as a whole (the worker's
   tracker applies its own idleness, `service.watermarks`). The rules are applied
   on every batch and on every clock tick of the slot, since sides go idle with
   time alone.

The clocks are shared by the worker's slots (`SlotContext.shared`): when slots
share a partition, each sees only some keys, and a side one slot never sees may
well be in another slot's records. They start afresh with fresh slots (after a
rollback), so time seen in an aborted epoch is forgotten.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson

from weir.operators.chain import Barrier, Batch, Operator, Row, SlotContext, _text, meta_factory
from weir.operators.formats import encode_key
from weir.operators.plan import MergedSource, Rekey, SideRepartition


class SideClocks:
    """Per partition of one multi-input operator's topic, what each side has shown."""

    def __init__(self, clocks: tuple[tuple[float, float | None], ...]) -> None:
        self._sides = [(round(ooo * 1000), idle) for ooo, idle in clocks]
        self._lock = threading.Lock()
        self._since: dict[int, float] = {}  # partition -> first read (processing time, s)
        self._max: dict[tuple[int, int], int] = {}  # (partition, side) -> largest time
        self._seen: dict[tuple[int, int], float] = {}  # (partition, side) -> last seen

    def observe(self, partition: int, newest: dict[int, int], now: float) -> int | None:
        """A batch of ``partition`` showed ``newest[side]`` (its largest event time per
        side); the partition's watermark by the rules, or None if it has none."""
        with self._lock:
            self._since.setdefault(partition, now)
            for side, ts in newest.items():
                key = (partition, side)
                if ts > self._max.get(key, ts - 1):
                    self._max[key] = ts
                self._seen[key] = now
            return self._mark(partition, now)

    def mark(self, partition: int, now: float) -> int | None:
        """The partition's watermark at ``now`` with nothing new: sides go idle with time."""
        with self._lock:
            return self._mark(partition, now) if partition in self._since else None

    def _mark(self, partition: int, now: float) -> int | None:
        since = self._since[partition]
        marks = []
        for side, (ooo, idle) in enumerate(self._sides):
            key = (partition, side)
            quiet = now - self._seen.get(key, since)
            if idle is not None and quiet > idle:
                continue  # Rule 2: idle
            if key not in self._max:
                return None  # Rule 2: nothing known of this side yet
            marks.append(self._max[key] - ooo)  # Rule 1
        return min(marks) if marks else None  # Rule 3


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
    """Writes one side's elements to its operator's topic: ``[side, key, value]``
    keyed by ``fn(value)`` (or the element's key; a record key as UTF-8 text), with
    the event time as the record timestamp. A broadcast side writes
    ``[side, None, value]`` without a key to every partition."""

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
                    append((encode_key(key), dumps([side, key, v]), o, t))
                break
            except Exception as exc:
                self.ctx.fail(self.name, "key", batch, elems[i], exc)
                i += 1
        if rows:
            self.ctx.produce(self.topic, rows, batch)

    def _everywhere(self, batch: Batch) -> None:
        rows: list[Row] = []
        for elem in batch.elems:
            _, v, t, o = elem
            try:
                rows.append((None, orjson.dumps([self.side, None, v]), o, t))
            except Exception as exc:
                self.ctx.fail(self.name, "serialize", batch, elem, exc)
        if rows:
            for p in range(self.ctx.partitions(self.topic)):
                self.ctx.produce(self.topic, rows, batch, p)

    def on_barrier(self, barrier: Barrier) -> None:
        pass


class MergedSourceOp(Operator):
    """Reads a multi-input operator's topic: elements ``(key, [side, value], timestamp,
    offset)`` in the topic's order; reports the partition's watermark (module doc)."""

    __slots__ = ("clocks", "keep_headers", "partitions", "topic", "track_time")

    def __init__(self, op: MergedSource, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        self.track_time = False  # set when operators with timers follow (they do)
        self.keep_headers = False  # unused: what a multi-input operator emits has none
        self.clocks: SideClocks = ctx.shared.setdefault(op.name, SideClocks(op.clocks))
        self.topic = op.topic
        self.partitions: set[int] = set()  # read by this slot

    def tick(self) -> None:
        """Time passed (the slot's clock tick): sides may have gone idle meanwhile, so the
        partitions' watermarks may move with no new record (which `observe_time` is
        told, so the partition's own idleness is not reset)."""
        now = self.ctx.now_ms() / 1000
        for p in self.partitions:
            mark = self.clocks.mark(p, now)
            if mark is not None:
                self.ctx.observe_time(self.topic, p, mark, seen=False)

    def process(self, batch: Batch) -> None:
        elems: list[Any] = []
        newest: dict[int, int] = {}
        for m in batch.elems:
            try:
                side, k, v = orjson.loads(m.value())
            except Exception as exc:
                self.ctx.fail(self.name, "decode", batch, (m.key(), m.value(), 0, m.offset()), exc)
                continue
            ts = m.timestamp()[1]
            if ts > newest.get(side, ts - 1):
                newest[side] = ts
            elems.append((k, [side, v], ts, m.offset()))
        if self.track_time and newest:
            self.partitions.add(batch.partition)
            mark = self.clocks.observe(batch.partition, newest, self.ctx.now_ms() / 1000)
            if mark is not None:
                self.ctx.observe_time(batch.topic, batch.partition, mark)
        if elems and self.out is not None:
            self.out.process(Batch(batch.topic, batch.partition, elems))
