"""Operator instances: what runs inside a slot thread.

Each slot builds one instance of every operator of the plan (`build_chain`)
and pushes *batches* through them: an operator takes a `Batch`, runs its
function over all elements in one tight loop and hands one batch to the next
operator. There is no queue and no lock between chained operators; the only
hand-offs are exchanges, which split a batch per target slot and give the
pieces to the slot context.

An element is a tuple ``(key, value, timestamp_ms, source_offset)``. A batch
holds elements of one source partition, so its ``topic``/``partition`` say
where every element came from (for dead letters and, later, changelogs).

A record whose decoding or user function raises is handed to
``SlotContext.fail`` and the loop resumes after it: user functions are never
called twice for one record, and a bad record never stops the batch.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from weir.operators.formats import decoder, encode_key, encoder
from weir.operators.plan import (
    Filter,
    FlatMap,
    HashExchange,
    Map,
    Op,
    Partition,
    Partitioner,
    Repartition,
    RepartitionSource,
    Sink,
    Source,
)
from weir.state.epoch import EpochBuffer
from weir.state.keygroups import key_group, slot_table

Element = tuple[Any, Any, int, int]
Row = tuple[bytes | None, bytes, int, int]  # key, value, source offset, timestamp

MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the last valid event time


class Batch:
    """Elements from one source partition, processed together."""

    __slots__ = ("elems", "partition", "topic")

    def __init__(self, topic: str, partition: int, elems: list[Any]) -> None:
        self.topic = topic
        self.partition = partition
        self.elems = elems


class Barrier:
    """Checkpoint barrier ``id``: everything before it belongs to checkpoint ``id``."""

    __slots__ = ("id",)

    def __init__(self, checkpoint_id: int) -> None:
        self.id = checkpoint_id

    def __repr__(self) -> str:
        return f"Barrier({self.id})"


class SlotContext(Protocol):
    """What an operator instance may ask of the slot running it."""

    slot: int
    slots: int
    state: EpochBuffer | None  # the slot's keyed state (None for stateless jobs)

    def produce(self, topic: str, rows: list[Row], batch: Batch) -> None:
        """Write ``(key, value, source_offset, timestamp_ms)`` rows of ``batch`` to ``topic``."""

    def fail(self, operator: str, reason: str, batch: Batch, elem: Any, exc: BaseException) -> None:
        """Handle one failed record according to the job's error policy."""

    def send(self, slot: int, target: int, item: Batch | Barrier) -> None:
        """Hand ``item`` to operator ``target`` in slot ``slot`` (an exchange)."""

    def now_ms(self) -> int:
        """Processing time, epoch ms: the wall clock in a worker, a clock the test
        drives in `weir.testing`."""

    def late(self, operator: str, count: int, reason: str = "late") -> None:
        """Count records that arrived after their windows were gone (``late``), or whose
        event time was too far ahead of the wall clock (``future``)."""

    def observe_time(self, topic: str, partition: int, max_timestamp: int) -> None:
        """The largest event time seen in a batch of a partition (for watermarks)."""


class Operator:
    """Base of all operator instances: forwards barriers to its output."""

    __slots__ = ("ctx", "name", "out")

    def __init__(self, op: Op, ctx: SlotContext) -> None:
        self.name = op.name
        self.ctx = ctx
        self.out: Operator | None = None

    def process(self, batch: Batch) -> None:
        raise NotImplementedError

    def on_barrier(self, barrier: Barrier) -> None:
        if self.out is not None:
            self.out.on_barrier(barrier)


class FanOut(Operator):
    """Gives the same batch to several downstream operators (a branching stream)."""

    __slots__ = ("targets",)

    def __init__(self, targets: list[Operator]) -> None:
        self.targets = targets
        self.out = None

    def process(self, batch: Batch) -> None:
        for target in self.targets:
            target.process(batch)

    def on_barrier(self, barrier: Barrier) -> None:
        for target in self.targets:
            target.on_barrier(barrier)


class SourceOp(Operator):
    """Decodes a batch of Kafka messages into elements.

    Event times are checked here, before anything downstream sees them: one the
    ``timestamp`` function returns that is not an integer number of epoch
    milliseconds from 0 to `MAX_EPOCH_MS` fails its record (reason ``timestamp``);
    one further ahead of the wall clock than ``max_future`` goes to the dead-letter
    topic with reason ``future``, is counted as late, and never moves the watermark.
    """

    __slots__ = ("decode", "future_ms", "timestamp", "track_time")

    def __init__(self, op: Source, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        self.decode = decoder(op.value)
        self.timestamp: Callable[[Any], int] | None = op.timestamp
        self.track_time = False  # set when windows downstream need this source's watermark
        self.future_ms = None if op.max_future is None else round(op.max_future * 1000)

    def process(self, batch: Batch) -> None:
        msgs = batch.elems
        decode = self.decode
        try:
            elems = [(m.key(), decode(m.value()), m.timestamp()[1], m.offset()) for m in msgs]
        except Exception:
            elems = self._decode_each(batch)
        if self.timestamp is not None:
            elems = self._extract_timestamps(batch, elems)
        if elems and (self.timestamp is not None or self.track_time):
            newest = max(e[2] for e in elems)
            if self.future_ms is not None and newest > time.time() * 1000 + self.future_ms:
                elems = self._without_future(batch, elems)
                newest = max((e[2] for e in elems), default=newest)
            if self.track_time and elems:
                self.ctx.observe_time(batch.topic, batch.partition, newest)
        if elems and self.out is not None:
            self.out.process(Batch(batch.topic, batch.partition, elems))

    def _without_future(self, batch: Batch, elems: list[Element]) -> list[Element]:
        """Slow path: a batch holding an event time beyond ``max_future``."""
        now = time.time() * 1000
        limit = now + self.future_ms
        for elem in elems:
            if elem[2] > limit:
                ahead = (elem[2] - now) / 1000
                exc = ValueError(
                    f"event time {elem[2]} is {ahead:.0f}s ahead of the wall clock; the"
                    f" source allows max_future={self.future_ms / 1000:g}s"
                )
                self.ctx.late(self.name, 1, "future")
                self.ctx.fail(self.name, "future", batch, elem, exc)
        return [e for e in elems if e[2] <= limit]

    def _decode_each(self, batch: Batch) -> list[Element]:
        """Slow path, taken only for a batch holding a record that fails to decode."""
        decode = self.decode
        elems = []
        for m in batch.elems:
            try:
                elems.append((m.key(), decode(m.value()), m.timestamp()[1], m.offset()))
            except Exception as exc:
                self.ctx.fail(self.name, "decode", batch, (m.key(), m.value(), 0, m.offset()), exc)
        return elems

    def _extract_timestamps(self, batch: Batch, elems: list[Element]) -> list[Element]:
        extract = self.timestamp
        out: list[Element] = []
        append = out.append
        i, n = 0, len(elems)
        while i < n:
            try:
                for i in range(i, n):  # noqa: B020 - resumes after a failed record
                    k, v, _, o = elems[i]
                    t = int(extract(v))
                    if not 0 <= t <= MAX_EPOCH_MS:
                        raise ValueError(
                            f"event time {t} is not epoch milliseconds from 0 to {MAX_EPOCH_MS}"
                        )
                    append((k, v, t, o))
                break
            except Exception as exc:
                self.ctx.fail(self.name, "timestamp", batch, elems[i], exc)
                i += 1
        return out


class MapOp(Operator):
    __slots__ = ("fn",)

    def __init__(self, op: Map, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        self.fn = op.fn

    def process(self, batch: Batch) -> None:
        fn = self.fn
        elems = batch.elems
        out: list[Element] = []
        append = out.append
        i, n = 0, len(elems)
        while i < n:
            try:
                for i in range(i, n):  # noqa: B020 - resumes after a failed record
                    k, v, t, o = elems[i]
                    append((k, fn(v), t, o))
                break
            except Exception as exc:
                self.ctx.fail(self.name, "function", batch, elems[i], exc)
                i += 1
        if out:
            self.out.process(Batch(batch.topic, batch.partition, out))


class FilterOp(Operator):
    __slots__ = ("fn",)

    def __init__(self, op: Filter, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        self.fn = op.fn

    def process(self, batch: Batch) -> None:
        fn = self.fn
        elems = batch.elems
        out: list[Element] = []
        append = out.append
        i, n = 0, len(elems)
        while i < n:
            try:
                for i in range(i, n):  # noqa: B020 - resumes after a failed record
                    e = elems[i]
                    if fn(e[1]):
                        append(e)
                break
            except Exception as exc:
                self.ctx.fail(self.name, "function", batch, elems[i], exc)
                i += 1
        if out:
            self.out.process(Batch(batch.topic, batch.partition, out))


class FlatMapOp(Operator):
    __slots__ = ("fn",)

    def __init__(self, op: FlatMap, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        self.fn = op.fn

    def process(self, batch: Batch) -> None:
        fn = self.fn
        elems = batch.elems
        out: list[Element] = []
        extend = out.extend
        i, n = 0, len(elems)
        while i < n:
            try:
                for i in range(i, n):  # noqa: B020 - resumes after a failed record
                    k, v, t, o = elems[i]
                    extend([(k, r, t, o) for r in fn(v)])
                break
            except Exception as exc:
                self.ctx.fail(self.name, "function", batch, elems[i], exc)
                i += 1
        if out:
            self.out.process(Batch(batch.topic, batch.partition, out))


class RepartitionSourceOp(Operator):
    """Reads a repartition topic: values are ``[key, value]`` envelopes (JSON), the
    record timestamp is the event time."""

    __slots__ = ("track_time",)

    def __init__(self, op: RepartitionSource, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        self.track_time = False  # set when windows downstream need this source's watermark

    def process(self, batch: Batch) -> None:
        msgs = batch.elems
        elems = []
        for m in msgs:
            try:
                k, v = orjson.loads(m.value())
            except Exception as exc:
                self.ctx.fail(self.name, "decode", batch, (m.key(), m.value(), 0, m.offset()), exc)
                continue
            elems.append((k, v, m.timestamp()[1], m.offset()))
        if self.track_time and elems:
            self.ctx.observe_time(batch.topic, batch.partition, max(e[2] for e in elems))
        if elems and self.out is not None:
            self.out.process(Batch(batch.topic, batch.partition, elems))


class RepartitionOp(Operator):
    """``key_by(fn)`` before keyed state: writes ``[key, value]`` to the repartition
    topic, keyed by the key, with the event time as the record timestamp."""

    __slots__ = ("fn", "topic")

    def __init__(self, op: Repartition, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        self.fn = op.fn
        self.topic = op.topic

    def process(self, batch: Batch) -> None:
        fn, dumps = self.fn, orjson.dumps
        rows: list[Row] = []
        append = rows.append
        elems = batch.elems
        i, n = 0, len(elems)
        while i < n:
            try:
                for i in range(i, n):  # noqa: B020 - resumes after a failed record
                    _, v, t, o = elems[i]
                    key = fn(v)
                    append((encode_key(key), dumps([key, v]), o, t))
                break
            except Exception as exc:
                self.ctx.fail(self.name, "key", batch, elems[i], exc)
                i += 1
        if rows:
            self.ctx.produce(self.topic, rows, batch)

    def on_barrier(self, barrier: Barrier) -> None:
        pass


class RecordKeyOp(Operator):
    """``key_by()``: the Kafka record key is the key, as text when it is UTF-8."""

    __slots__ = ()

    def process(self, batch: Batch) -> None:
        elems = batch.elems
        try:
            out = [(k if k is None else k.decode(), v, t, o) for k, v, t, o in elems]
        except UnicodeDecodeError:
            out = [(_text(k), v, t, o) for k, v, t, o in elems]
        self.out.process(Batch(batch.topic, batch.partition, out))


def _text(key: bytes | None) -> str | bytes | None:
    """UTF-8 keys as text, other bytes as they are."""
    try:
        return key if key is None else key.decode()
    except UnicodeDecodeError:
        return key


class ExchangeOp(Operator):
    """Moves records between slots; the receiving slot feeds them to ``target``.

    Barriers go to every slot, so each receiver can align on all its inputs.
    """

    __slots__ = ("partitioner", "rr", "table", "target")

    def __init__(
        self, op: Partition | HashExchange, ctx: SlotContext, target: int, max_key_groups: int
    ) -> None:
        super().__init__(op, ctx)
        self.target = target
        self.partitioner = op.partitioner
        self.table = slot_table(ctx.slots, max_key_groups)
        self.rr = ctx.slot

    def process(self, batch: Batch) -> None:
        n = self.ctx.slots
        elems = batch.elems
        if self.partitioner is Partitioner.BROADCAST:
            parts = [elems] * n
        elif self.partitioner is Partitioner.REBALANCE:
            start = self.rr
            parts = [[] for _ in range(n)]
            for k in range(n):
                parts[(start + k) % n] = elems[k::n]
            self.rr = (start + len(elems)) % n
        elif self.partitioner is Partitioner.SHUFFLE:
            parts = [[] for _ in range(n)]
            for e, s in zip(elems, random.choices(range(n), k=len(elems)), strict=True):
                parts[s].append(e)
        else:
            parts = self._by_key(batch)
        send, target = self.ctx.send, self.target
        for slot, part in enumerate(parts):
            if part:
                send(slot, target, Batch(batch.topic, batch.partition, part))

    def _by_key(self, batch: Batch) -> list[list[Element]]:
        raise NotImplementedError

    def on_barrier(self, barrier: Barrier) -> None:
        for slot in range(self.ctx.slots):
            self.ctx.send(slot, self.target, barrier)


class KeyByOp(ExchangeOp):
    """``key_by(fn)``: sets each element's key and routes it to the slot owning its key group."""

    __slots__ = ("fn", "max_key_groups")

    def __init__(
        self, op: HashExchange, ctx: SlotContext, target: int, max_key_groups: int
    ) -> None:
        super().__init__(op, ctx, target, max_key_groups)
        self.fn = op.fn
        self.max_key_groups = max_key_groups

    def _by_key(self, batch: Batch) -> list[list[Element]]:
        fn, table, groups = self.fn, self.table, self.max_key_groups
        parts: list[list[Element]] = [[] for _ in range(self.ctx.slots)]
        elems = batch.elems
        i, n = 0, len(elems)
        while i < n:
            try:
                for i in range(i, n):  # noqa: B020 - resumes after a failed record
                    _, v, t, o = elems[i]
                    key = fn(v)
                    parts[table[key_group(encode_key(key), groups)]].append((key, v, t, o))
                break
            except Exception as exc:
                self.ctx.fail(self.name, "key", batch, elems[i], exc)
                i += 1
        return parts


class SinkOp(Operator):
    """Encodes elements and produces them to the sink topic."""

    __slots__ = ("encode", "key_fn", "topic")

    def __init__(self, op: Sink, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        self.topic = op.topic
        self.encode = encoder(op.value)
        self.key_fn = op.key

    def process(self, batch: Batch) -> None:
        encode, key_fn = self.encode, self.key_fn
        elems = batch.elems
        rows: list[Row] = []
        append = rows.append
        i, n = 0, len(elems)
        while i < n:
            try:
                if key_fn is None:
                    for i in range(i, n):  # noqa: B020 - resumes after a failed record
                        k, v, t, o = elems[i]
                        append((encode_key(k), encode(v), o, t))
                else:
                    for i in range(i, n):  # noqa: B020
                        _, v, t, o = elems[i]
                        append((encode_key(key_fn(v)), encode(v), o, t))
                break
            except Exception as exc:
                self.ctx.fail(self.name, "serialize", batch, elems[i], exc)
                i += 1
        if rows:
            self.ctx.produce(self.topic, rows, batch)

    def on_barrier(self, barrier: Barrier) -> None:
        pass
