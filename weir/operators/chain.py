"""Operator instances: what runs inside a slot thread.

Each slot builds one instance of every operator of the plan (`build_chain`)
and pushes *batches* through them: an operator takes a `Batch`, runs its
function over all elements in one tight loop and hands one batch to the next
operator. There is no queue and no lock between chained operators; the only
hand-offs are exchanges, which split a batch per target slot and give the
pieces to the slot context.

An element is a tuple ``(key, value, timestamp_ms, source_offset)``. A batch
holds elements of one source partition, so its ``topic``/``partition`` say
where every element came from (for dead letters and changelogs). When a
function of the dataflow asks for record metadata (``with_meta=True``), the
source also keeps the records' Kafka headers, by offset, in ``batch.headers``,
and the stateless operators pass them on; otherwise that is None and costs
nothing.

A record whose decoding or user function raises is handed to
``SlotContext.fail`` and the loop resumes after it: user functions are never
called twice for one record, and a bad record never stops the batch.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson

from weir.operators.exceptions import StateRefused
from weir.operators.formats import SerdeContext, SerdeUnavailable, decoder, encode_key, encoder
from weir.operators.meta import Headers, RecordMeta, normalize_headers
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
    Union,
)
from weir.state.epoch import EpochBuffer
from weir.state.exceptions import UnstorableState
from weir.state.keygroups import key_group, slot_table

Element = tuple[Any, Any, int, int]
# key, value, source offset, timestamp[, headers]: rows with headers have a fifth field
Row = tuple[bytes | None, bytes, int, int] | tuple[bytes | None, bytes, int, int, Headers]

MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the last valid event time


class Batch:
    """Elements from one source partition, processed together; ``headers`` maps
    source offsets to Kafka headers when record metadata is asked for."""

    __slots__ = ("elems", "headers", "partition", "topic")

    def __init__(
        self,
        topic: str,
        partition: int,
        elems: list[Any],
        headers: dict[int, Headers] | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.elems = elems
        self.headers = headers


def meta_factory(batch: Batch) -> Callable[[Any, int, int], RecordMeta]:
    """Builds the `RecordMeta` of an element ``(key, _, timestamp, offset)`` of ``batch``."""
    topic, partition, headers = batch.topic, batch.partition, batch.headers or {}
    return lambda k, t, o: RecordMeta(k, t, topic, partition, o, headers.get(o))


class Barrier:
    """Checkpoint barrier ``id``: everything before it belongs to checkpoint ``id``."""

    __slots__ = ("id",)

    def __init__(self, checkpoint_id: int) -> None:
        self.id = checkpoint_id

    def __repr__(self) -> str:
        return f"Barrier({self.id})"


class DirectOutput:
    """What a fused chain needs to produce its records one by one (`SlotContext.direct`).

    ``produce`` is confluent-kafka's, called positionally — ``(topic, value, key, -1,
    None, None, timestamp)``: -1 lets the partitioner decide, None keeps the producer's
    delivery callback (keyword arguments cost about as much to parse as the rest of the
    call); ``poll`` lets a full queue drain; ``refused`` is the exception it raises for
    a record it refuses. The topic accepts key and value of up to ``largest`` bytes
    together and timestamps from ``earliest`` to ``latest`` (0 and below: stamped by
    the producer); for a record outside these, ``refusal(key, value, timestamp)`` says
    why the broker would refuse it (None when it fits after all). ``done(n)`` counts
    what was sent."""

    __slots__ = ("done", "earliest", "largest", "latest", "poll", "produce", "refusal", "refused")

    def __init__(
        self,
        produce: Callable[..., None],
        poll: Callable[[float], Any],
        refused: type[BaseException],
        largest: float,
        earliest: float,
        latest: float,
        refusal: Callable[[bytes | None, bytes, int], str | None],
        done: Callable[[int], None],
    ) -> None:
        self.produce, self.poll, self.refused = produce, poll, refused
        self.largest, self.earliest, self.latest = largest, earliest, latest
        self.refusal, self.done = refusal, done

    # The rare paths of a direct send, out of the per-record loops that call them.
    def refuse(
        self, topic: str, key: bytes | None, data: bytes, ts: int, offset: int, batch: Batch,
        fail: Callable[..., None],
    ) -> bool:  # fmt: skip
        """A record outside the topic's bounds: dead-letter it if the broker would refuse
        it (``too-large`` or ``timestamp``, as `SlotContext.produce` does); True if so."""
        refusal = self.refusal(key, data, ts)
        if refusal is None:
            return False
        reason = "too-large" if refusal.startswith("record of") else "timestamp"
        fail(f"sink-{topic}", reason, batch, (key, data, ts, offset), ValueError(refusal))
        return True

    def retry(
        self, exc: BaseException, topic: str, key: bytes | None, data: bytes, ts: int,
        offset: int, batch: Batch, fail: Callable[..., None],
    ) -> bool:  # fmt: skip
        """``produce`` raised ``exc``: while librdkafka's queue is full, let it drain and
        try again; a record the producer refuses is dead-lettered with reason
        ``produce``. True if the record was sent in the end."""
        while isinstance(exc, BufferError):
            self.poll(0.05)
            try:
                self.produce(topic, data, key, -1, None, None, ts if ts > 0 else 0)
                return True
            except (BufferError, self.refused) as again:
                exc = again
        fail(f"sink-{topic}", "produce", batch, (key, data, 0, offset), exc)
        return False


class SlotContext(Protocol):
    """What an operator instance may ask of the slot running it."""

    slot: int
    slots: int
    state: EpochBuffer | None  # the slot's keyed state (None for stateless jobs)
    registry: Mapping[str, str] | None  # schema registry client settings, for serdes
    shared: dict[str, Any]  # one dict for all slots of the worker, fresh with fresh slots

    def produce(
        self, topic: str, rows: list[Row], batch: Batch, partition: int | None = None
    ) -> None:
        """Write ``(key, value, source_offset, timestamp_ms[, headers])`` rows of ``batch``
        to ``topic`` (all rows of one call have headers, or none has), to ``partition``
        or where the producer's partitioner puts each key."""

    def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` (one the job reads) has."""

    def direct(self, topic: str) -> DirectOutput | None:
        """How to produce outputs to ``topic`` one record at a time, or None when the
        slot cannot now: the staged operators then take the batch."""

    def fail(self, operator: str, reason: str, batch: Batch, elem: Any, exc: BaseException) -> None:
        """Handle one failed record according to the job's error policy."""

    def send(
        self, slot: int, target: int, item: Batch | Barrier, channel: int | None = None
    ) -> None:
        """Hand ``item`` to operator ``target`` in slot ``slot`` (an exchange), on
        ``channel`` (default: this slot's number; a union's inputs number theirs)."""

    def now_ms(self) -> int:
        """Processing time, epoch ms: the wall clock in a worker, a clock the test
        drives in `weir.testing`."""

    def late(self, operator: str, count: int, reason: str = "late") -> None:
        """Count records that arrived after their windows were gone (``late``), or whose
        event time was too far ahead of the wall clock (``future``)."""

    def observe_time(
        self, topic: str, partition: int, max_timestamp: int, seen: bool = True
    ) -> None:
        """The largest event time seen in a batch of a partition (for watermarks);
        ``seen=False``: no record came, only what is known of the partition's time moved."""


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

    def refuse(self, batch: Batch, elem: Element, exc: UnstorableState) -> None:
        """``elem``'s keyed state cannot be stored: the record goes to the dead-letter
        topic with reason ``state``, naming this operator and the key, and changes nothing."""
        refused = StateRefused(self.name, elem[0], exc.problem)
        self.ctx.fail(self.name, refused.reason, batch, elem, refused)


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

    A table's source keeps a ``None`` value (a tombstone) as None, with its record's
    timestamp as its event time. Event times are checked here, before anything
    downstream sees them: one the ``timestamp`` function returns that is not an
    integer number of epoch milliseconds from 0 to `MAX_EPOCH_MS` fails its record
    (reason ``timestamp``);
    one further ahead of the wall clock than ``max_future`` goes to the dead-letter
    topic with reason ``future``, is counted as late, and never moves the watermark.

    Values are decoded with the source's format, keys with its ``key_format``
    when it has one (a None key stays None); a record that fails either goes to
    the dead-letter topic (reason ``decode``). The Kafka headers are kept only
    when a function downstream asks for record metadata (``keep_headers``).
    """

    __slots__ = (
        "decode", "decode_key", "future_ms", "keep_headers", "table", "timestamp", "track_time",
    )  # fmt: skip

    def __init__(self, op: Source, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        registry = _registry(ctx)
        decode = decoder(op.value, SerdeContext(op.topic, False, registry))
        self.table = op.table
        self.decode = _tombstones(decode) if op.table else decode
        self.decode_key = (
            None
            if op.key_format is None
            else decoder(op.key_format, SerdeContext(op.topic, True, registry))
        )
        self.timestamp: Callable[[Any], int] | None = op.timestamp
        self.track_time = False  # set when windows downstream need this source's watermark
        self.keep_headers = False  # set when a function downstream takes record metadata
        self.future_ms = None if op.max_future is None else round(op.max_future * 1000)

    def process(self, batch: Batch) -> None:
        msgs = batch.elems
        decode, decode_key = self.decode, self.decode_key
        if self.timestamp is not None:
            elems = self._decode_with_event_times(batch)
        else:
            try:
                if decode_key is None:
                    elems = [
                        (m.key(), decode(m.value()), m.timestamp()[1], m.offset()) for m in msgs
                    ]
                else:
                    elems = [
                        (_key(decode_key, m.key()), decode(m.value()), m.timestamp()[1], m.offset())
                        for m in msgs
                    ]
            except Exception:
                elems = self._decode_each(batch)
        if elems and (self.timestamp is not None or self.track_time):
            newest = max(e[2] for e in elems)
            if self.future_ms is not None and newest > time.time() * 1000 + self.future_ms:
                elems = self._without_future(batch, elems)
                newest = max((e[2] for e in elems), default=newest)
            if self.track_time and elems:
                self.ctx.observe_time(batch.topic, batch.partition, newest)
        if elems and self.out is not None:
            headers = _headers_of(msgs) if self.keep_headers else None
            self.out.process(Batch(batch.topic, batch.partition, elems, headers))

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
        """Slow path, taken only for a batch holding a record that fails to decode. A
        serde that cannot reach its registry fails the slot instead (`SerdeUnavailable`)."""
        decode, decode_key = self.decode, self.decode_key
        elems = []
        for m in batch.elems:
            try:
                k = m.key() if decode_key is None else _key(decode_key, m.key())
                elems.append((k, decode(m.value()), m.timestamp()[1], m.offset()))
            except SerdeUnavailable:
                raise
            except Exception as exc:
                self.ctx.fail(self.name, "decode", batch, (m.key(), m.value(), 0, m.offset()), exc)
        return elems

    def _decode_with_event_times(self, batch: Batch) -> list[Element]:
        """Decode each record and take its event time from ``timestamp``, in one pass; a
        record that fails to decode fails with reason ``decode``, one whose timestamp
        function raises or returns no valid epoch ms with reason ``timestamp``. A
        table's tombstone has no value to take a time from: its record's timestamp is
        its event time."""
        decode, decode_key, extract = self.decode, self.decode_key, self.timestamp
        table, fail, name = self.table, self.ctx.fail, self.name
        out: list[Element] = []
        append = out.append
        for m in batch.elems:
            try:
                k = m.key() if decode_key is None else _key(decode_key, m.key())
                v = decode(m.value())
            except SerdeUnavailable:
                raise
            except Exception as exc:
                fail(name, "decode", batch, (m.key(), m.value(), 0, m.offset()), exc)
                continue
            try:
                t = int(extract(v)) if v is not None or not table else m.timestamp()[1]
                if not 0 <= t <= MAX_EPOCH_MS:
                    raise ValueError(
                        f"event time {t} is not epoch milliseconds from 0 to {MAX_EPOCH_MS}"
                    )
            except Exception as exc:
                fail(name, "timestamp", batch, (k, v, m.timestamp()[1], m.offset()), exc)
                continue
            append((k, v, t, m.offset()))
        return out


def _tombstones(decode: Callable[[bytes], Any]) -> Callable[[bytes | None], Any]:
    """A table's decoder: a ``None`` value (a tombstone: the key is deleted) stays None."""

    def decode_table(data: bytes | None) -> Any:
        return None if data is None else decode(data)

    return decode_table


class MapOp(Operator):
    """``fn(value)``, or ``fn(value, meta)`` when it asked for record metadata: two
    loops, so a function that did not ask pays nothing for metadata."""

    __slots__ = ("fn", "with_meta")

    def __init__(self, op: Map, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        self.fn = op.fn
        self.with_meta = op.with_meta

    def process(self, batch: Batch) -> None:
        fn = self.fn
        elems = batch.elems
        out: list[Element] = []
        append = out.append
        meta = meta_factory(batch) if self.with_meta else None
        i, n = 0, len(elems)
        while i < n:
            try:
                if meta is None:
                    for i in range(i, n):  # noqa: B020 - resumes after a failed record
                        k, v, t, o = elems[i]
                        append((k, fn(v), t, o))
                else:
                    for i in range(i, n):  # noqa: B020
                        k, v, t, o = elems[i]
                        append((k, fn(v, meta(k, t, o)), t, o))
                break
            except Exception as exc:
                self.ctx.fail(self.name, "function", batch, elems[i], exc)
                i += 1
        if out:
            self.out.process(Batch(batch.topic, batch.partition, out, batch.headers))


class FilterOp(Operator):
    __slots__ = ("fn", "with_meta")

    def __init__(self, op: Filter, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        self.fn = op.fn
        self.with_meta = op.with_meta

    def process(self, batch: Batch) -> None:
        fn = self.fn
        elems = batch.elems
        out: list[Element] = []
        append = out.append
        meta = meta_factory(batch) if self.with_meta else None
        i, n = 0, len(elems)
        while i < n:
            try:
                if meta is None:
                    for i in range(i, n):  # noqa: B020 - resumes after a failed record
                        e = elems[i]
                        if fn(e[1]):
                            append(e)
                else:
                    for i in range(i, n):  # noqa: B020
                        e = elems[i]
                        if fn(e[1], meta(e[0], e[2], e[3])):
                            append(e)
                break
            except Exception as exc:
                self.ctx.fail(self.name, "function", batch, elems[i], exc)
                i += 1
        if out:
            self.out.process(Batch(batch.topic, batch.partition, out, batch.headers))


class FlatMapOp(Operator):
    __slots__ = ("fn", "with_meta")

    def __init__(self, op: FlatMap, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        self.fn = op.fn
        self.with_meta = op.with_meta

    def process(self, batch: Batch) -> None:
        fn = self.fn
        elems = batch.elems
        out: list[Element] = []
        extend = out.extend
        meta = meta_factory(batch) if self.with_meta else None
        i, n = 0, len(elems)
        while i < n:
            try:
                if meta is None:
                    for i in range(i, n):  # noqa: B020 - resumes after a failed record
                        k, v, t, o = elems[i]
                        extend([(k, r, t, o) for r in fn(v)])
                else:
                    for i in range(i, n):  # noqa: B020
                        k, v, t, o = elems[i]
                        extend([(k, r, t, o) for r in fn(v, meta(k, t, o))])
                break
            except Exception as exc:
                self.ctx.fail(self.name, "function", batch, elems[i], exc)
                i += 1
        if out:
            self.out.process(Batch(batch.topic, batch.partition, out, batch.headers))


class RepartitionSourceOp(Operator):
    """Reads a repartition topic: values are ``[key, value, event time]`` envelopes
    (JSON; ``[key, value]`` from earlier versions, whose record timestamp was the event
    time); headers are kept as a source's are. Its watermark is not taken from these
    records but from what the upstream writers announce
    (`weir.service.repartition_watermarks`; the fetcher keeps those control records
    away from the slots)."""

    __slots__ = ("keep_headers",)

    def __init__(self, op: RepartitionSource, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        self.keep_headers = False  # set when a function downstream takes record metadata

    def process(self, batch: Batch) -> None:
        msgs = batch.elems
        loads = orjson.loads
        elems = []
        for m in msgs:
            try:
                k, v, t = loads(m.value())
            except Exception:
                try:  # an envelope of an earlier version, or not one
                    k, v = loads(m.value())
                    t = m.timestamp()[1]
                except Exception as exc:
                    record = (m.key(), m.value(), 0, m.offset())
                    self.ctx.fail(self.name, "decode", batch, record, exc)
                    continue
            elems.append((k, v, t, m.offset()))
        if elems and self.out is not None:
            headers = _headers_of(msgs) if self.keep_headers else None
            self.out.process(Batch(batch.topic, batch.partition, elems, headers))


class RepartitionOp(Operator):
    """``key_by(fn)`` before keyed state: writes ``[key, value, event time]`` to the
    repartition topic, keyed by the key. The record timestamp is the wall clock (the
    producer stamps it), not the event time: the broker deletes segments by their
    records' timestamps (``retention.ms``), which would take a backlog of events older
    than that before it is read, and refuses timestamps far ahead of its clock. When
    the batch carries headers (metadata was asked for), they travel with the record."""

    __slots__ = ("fn", "topic", "with_meta")

    def __init__(self, op: Repartition, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        self.fn = op.fn
        self.topic = op.topic
        self.with_meta = op.with_meta

    def process(self, batch: Batch) -> None:
        fn, dumps = self.fn, orjson.dumps
        rows: list[Row] = []
        append = rows.append
        elems = batch.elems
        headers = batch.headers
        meta = meta_factory(batch) if self.with_meta else None
        i, n = 0, len(elems)
        while i < n:
            try:
                if headers is None:
                    for i in range(i, n):  # noqa: B020 - resumes after a failed record
                        k, v, t, o = elems[i]
                        key = fn(v) if meta is None else fn(v, meta(k, t, o))
                        append((encode_key(key), dumps([key, v, t]), o, 0))
                else:
                    for i in range(i, n):  # noqa: B020
                        k, v, t, o = elems[i]
                        key = fn(v) if meta is None else fn(v, meta(k, t, o))
                        append((encode_key(key), dumps([key, v, t]), o, 0, headers.get(o) or []))
                break
            except Exception as exc:
                self.ctx.fail(self.name, "key", batch, elems[i], exc)
                i += 1
        if rows:
            self.ctx.produce(self.topic, rows, batch)

    def on_barrier(self, barrier: Barrier) -> None:
        pass


class RecordKeyOp(Operator):
    """``key_by()``: the Kafka record key is the key, as text when it is UTF-8 (a key
    the source decoded with its ``key_format`` stays as decoded)."""

    __slots__ = ()

    def process(self, batch: Batch) -> None:
        elems = batch.elems
        try:
            out = [(k if k is None else k.decode(), v, t, o) for k, v, t, o in elems]
        except (UnicodeDecodeError, AttributeError):
            out = [(_text(k), v, t, o) for k, v, t, o in elems]
        self.out.process(Batch(batch.topic, batch.partition, out, batch.headers))


def _text(key: Any) -> Any:
    """UTF-8 keys as text, other bytes as they are, decoded keys unchanged."""
    if not isinstance(key, bytes):
        return key
    try:
        return key.decode()
    except UnicodeDecodeError:
        return key


def _key(decode_key: Callable[[bytes], Any], key: bytes | None) -> Any:
    return None if key is None else decode_key(key)


def _registry(ctx: SlotContext) -> Mapping[str, str] | None:
    """The slot's schema registry settings; a context that predates them has none."""
    return getattr(ctx, "registry", None)


def _nullable(encode: Callable[[Any], bytes]) -> Callable[[Any], bytes | None]:
    """A key encoder that leaves a None key None (no key, not an encoded null)."""
    return lambda key: None if key is None else encode(key)


def _headers_of(msgs: list[Any]) -> dict[int, Headers]:
    """The Kafka headers of a batch's messages, by offset (those that have any)."""
    return {m.offset(): h for m in msgs if (h := m.headers())}


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
                send(slot, target, Batch(batch.topic, batch.partition, part, batch.headers))

    def _by_key(self, batch: Batch) -> list[list[Element]]:
        raise NotImplementedError

    def on_barrier(self, barrier: Barrier) -> None:
        for slot in range(self.ctx.slots):
            self.ctx.send(slot, self.target, barrier)


class KeyByOp(ExchangeOp):
    """``key_by(fn)``: sets each element's key and routes it to the slot owning its key group."""

    __slots__ = ("fn", "max_key_groups", "with_meta")

    def __init__(
        self, op: HashExchange, ctx: SlotContext, target: int, max_key_groups: int
    ) -> None:
        super().__init__(op, ctx, target, max_key_groups)
        self.fn = op.fn
        self.max_key_groups = max_key_groups
        self.with_meta = op.with_meta

    def _by_key(self, batch: Batch) -> list[list[Element]]:
        fn, table, groups = self.fn, self.table, self.max_key_groups
        parts: list[list[Element]] = [[] for _ in range(self.ctx.slots)]
        elems = batch.elems
        meta = meta_factory(batch) if self.with_meta else None
        i, n = 0, len(elems)
        while i < n:
            try:
                for i in range(i, n):  # noqa: B020 - resumes after a failed record
                    k, v, t, o = elems[i]
                    key = fn(v) if meta is None else fn(v, meta(k, t, o))
                    parts[table[key_group(encode_key(key), groups)]].append((key, v, t, o))
                break
            except Exception as exc:
                self.ctx.fail(self.name, "key", batch, elems[i], exc)
                i += 1
        return parts


class UnionInputOp(Operator):
    """One input of a union: hands its batches and barriers to the union's target in
    this slot, on the channel of this input, where the slot aligns the barriers of
    all the union's inputs before the union's chain sees one."""

    __slots__ = ("channel", "target")

    def __init__(self, op: Union, ctx: SlotContext, channel: int) -> None:
        super().__init__(op, ctx)
        self.target = op.id
        self.channel = channel

    def process(self, batch: Batch) -> None:
        self.ctx.send(self.ctx.slot, self.target, batch, self.channel)

    def on_barrier(self, barrier: Barrier) -> None:
        self.ctx.send(self.ctx.slot, self.target, barrier, self.channel)


class SinkOp(Operator):
    """Encodes elements and produces them to the sink topic.

    The common sink (no key function, headers or key format) encodes and produces each
    element in one pass when the slot can produce directly (`SlotContext.direct`),
    else it builds rows in one tight loop for `SlotContext.produce`; the others build
    each row with `_row`, which calls the functions the sink was given — with
    `RecordMeta` when it asked for it.
    """

    __slots__ = ("encode", "encode_key", "headers_fn", "key_fn", "simple", "topic", "with_meta")

    def __init__(self, op: Sink, ctx: SlotContext) -> None:
        super().__init__(op, ctx)
        self.topic = op.topic
        registry = _registry(ctx)
        self.encode = encoder(op.value, SerdeContext(op.topic, False, registry))
        self.encode_key = (
            encode_key
            if op.key_format is None
            else _nullable(encoder(op.key_format, SerdeContext(op.topic, True, registry)))
        )
        self.key_fn = op.key
        self.headers_fn = op.headers
        self.with_meta = op.with_meta
        self.simple = op.key is None and op.headers is None and op.key_format is None

    def process(self, batch: Batch) -> None:
        direct = self.ctx.direct(self.topic) if self.simple and not self.with_meta else None
        if direct is not None:
            self._send(batch, direct)
            return
        encode = self.encode
        elems = batch.elems
        rows: list[Row] = []
        append = rows.append
        meta = meta_factory(batch) if self.with_meta else None
        i, n = 0, len(elems)
        while i < n:
            try:
                if self.simple:  # bytes and None keys (Kafka's) need no call to encode
                    for i in range(i, n):  # noqa: B020 - resumes after a failed record
                        k, v, t, o = elems[i]
                        if k is not None and k.__class__ is not bytes:
                            k = encode_key(k)
                        append((k, encode(v), o, t))
                else:
                    row = self._row
                    for i in range(i, n):  # noqa: B020
                        append(row(elems[i], meta))
                break
            except SerdeUnavailable:
                raise
            except Exception as exc:
                self.ctx.fail(self.name, "serialize", batch, elems[i], exc)
                i += 1
        if rows:
            self.ctx.produce(self.topic, rows, batch)

    def _send(self, batch: Batch, direct: DirectOutput) -> None:
        """The common sink producing directly: each element is encoded, checked against
        what the topic accepts and produced at once, with the failures the rows path
        gives (``serialize``; ``too-large`` and ``timestamp`` as `SlotContext.produce`
        dead-letters them; ``produce`` when the producer refuses it)."""
        encode, topic, fail, name = self.encode, self.topic, self.ctx.fail, self.name
        produce, refused = direct.produce, direct.refused
        largest, earliest, latest = direct.largest, direct.earliest, direct.latest
        sent = 0
        for elem in batch.elems:
            k, v, t, o = elem
            try:
                if k is not None and k.__class__ is not bytes:
                    k = encode_key(k)
                data = encode(v)
            except SerdeUnavailable:
                raise
            except Exception as exc:
                fail(name, "serialize", batch, elem, exc)
                continue
            size = len(data) if k is None else len(data) + len(k)
            if (size > largest or t > latest or earliest > t > 0) and direct.refuse(
                topic, k, data, t, o, batch, fail
            ):
                continue
            try:
                produce(topic, data, k, -1, None, None, t if t > 0 else 0)
            except (BufferError, refused) as exc:
                if not direct.retry(exc, topic, k, data, t, o, batch, fail):
                    continue
            sent += 1
        direct.done(sent)

    def _row(self, elem: Element, meta: Callable[[Any, int, int], RecordMeta] | None) -> Row:
        """One element's row with the sink's key function, key format and headers."""
        k, v, t, o = elem
        m = None if meta is None else meta(k, t, o)
        if self.key_fn is not None:
            k = self.key_fn(v) if m is None else self.key_fn(v, m)
        if self.headers_fn is None:
            return (self.encode_key(k), self.encode(v), o, t)
        h = self.headers_fn(v) if m is None else self.headers_fn(v, m)
        return (self.encode_key(k), self.encode(v), o, t, normalize_headers(h or ()))

    def on_barrier(self, barrier: Barrier) -> None:
        pass
