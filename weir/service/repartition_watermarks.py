"""Watermarks through repartition topics: what upstream writers announce, and what a
repartition partition's watermark is.

A window behind ``key_by(fn)`` reads a repartition topic that every worker reading
the upstream topic writes into. One repartition partition interleaves records of
every upstream partition, each at its own point in event time — while a backlog is
caught up, one upstream partition can be hours ahead of another — so the records'
own timestamps cannot say how far event time has got. As in Flink, where a task's
watermark is the minimum over its input channels of the watermark each carried,
**the watermark of a repartition partition is the minimum, over the upstream
partitions, of the watermark each has announced**; records late relative to that
are late, and nothing else is.

The protocol, per `WatermarkChannel` (a repartition topic R and its upstream topic
U, from the plan):

1. **Take** (checkpoint step 1, the barrier). For every partition of U it owns and
   is not restoring, the worker takes its watermark and whether it is idle, by the
   tracker's rules (`weir.service.watermarks`). The watermark is taken from what the
   slots had processed when the barrier was put behind the records fetched, so it
   covers only records before the barrier: a lower bound, never ahead of them.
   When timers lie between U and the ``key_by`` (``timed``), the records written
   carry times those timers chose (a window's end), so the value is held to U's
   own watermark, which the timers have reached by the barrier.
2. **Write** (checkpoint step 3, before the commit). Once every slot has passed
   the barrier, nothing more of the epoch will be produced and nothing of the
   next is (held until release). The worker then writes one *control record*
   into every partition of R: header ``weir.watermark``, value
   ``{"t": U, "n": partitions of U, "w": [[partition, watermark, idle], ...]}``
   listing all its partitions of U. In every partition of R the announcement
   thus follows every record it covers and rides in the same transaction:
   committed, aborted and replayed with them — exactly once. It is written only
   when something changed since the last *committed* announcement, so an idle
   job writes nothing, and an aborted one is written again.
3. **Read** (downstream fetch). The router takes control records out of the
   batches it routes (`weir.service.router`); user functions, windows and sinks never
   see them. Each updates the `UpstreamTable` of its upstream topic in the
   partition it was read from: per upstream partition, the highest watermark
   announced (never back, whoever announced it) and whether it is idle now.
4. **Apply** (`weir.service.watermarks`, rules 1 and 3). A partition of R is at the
   minimum over the upstream partitions not idle; one that has announced
   nothing holds it — a slow, restarting or not yet started writer holds the
   downstream, as an input channel holds a Flink task. It is idle when every
   upstream partition is idle and it is read to its end, and has then reached the
   highest watermark they announced (Flink's valve flushes the largest when its
   last channel goes idle). Its records' own times and silences play no part.
   The tracker runs on the fetcher thread after the records before the control
   record were handed to the slots, so a watermark it raises reaches every slot
   behind them.
5. **Persist** (checkpoint step 3). A partition's table is committed as the
   metadata of its committed offset, in the same transaction (as Kafka Streams
   keeps a partition's time): a restart, a rollback and a new owner after a
   rebalance resume from the table of exactly the committed position.

Behind a union of several topics, each of them is an upstream topic of R, with a
channel of its own: its writers announce its partitions, and a partition of R keeps
one table per upstream topic (`UpstreamTables`) and is at the minimum over all of
them, as a task behind a union is at the minimum over all its input channels.

Rescaling needs nothing more: announcements are keyed by upstream partition, not
by writer, and every writer writes into every partition of R, whatever the
partition counts of U and R. A partition of U that changes owner is announced by
its new owner from what it reads; the downstream keeps the highest value. The
count of U travels in each announcement, so partitions added to U join the
minimum once their owner knows them.

Idleness is the upstream owner's promise that nothing more is coming; an upstream
partition that wakes up after announcing it may find its records late, as in
Flink. At-least-once has no transactions: announcements are flushed with the
records before the offsets are committed, and a replay after a failure may find
its records late.

Offset metadata is limited to 4096 bytes by default (``offset.metadata.max.bytes``),
so a table is encoded compactly (`UpstreamTable.encode`), exactly while it fits
and otherwise with watermarks rounded down — a lower bound, which only holds the
watermark back after a restart until the next announcements; a repartition topic
whose watermark is needed takes at most `MAX_UPSTREAM` upstream partitions, over all
its upstream topics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from weir.operators.physical import WatermarkChannel
from weir.operators.timers import NO_TIME

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]
HEADER = "weir.watermark"
HEADERS = [(HEADER, b"1")]
METADATA_LIMIT = 4000  # offset.metadata.max.bytes is 4096 by default
MAX_UPSTREAM = 256  # upstream partitions whose table fits METADATA_LIMIT, however rounded
UNITS = (1, 10**3, 10**6, 10**9, 10**12, 10**15)  # ms; the last rounds every delta to 0


class Announced(NamedTuple):
    """An upstream partition's watermark (`NO_TIME`: none yet) and whether it is idle."""

    watermark: int
    idle: bool


class UpstreamTable:
    """What the upstream partitions announced into one repartition partition."""

    __slots__ = ("entries",)

    def __init__(self, count: int, entries: Iterable[Announced | None] = ()) -> None:
        self.entries: list[Announced | None] = list(entries)
        self.grow(count)

    def grow(self, count: int) -> None:
        """The upstream topic has ``count`` partitions (never shrinks)."""
        self.entries.extend([None] * (count - len(self.entries)))

    def merge(self, partition: int, announced: Announced) -> None:
        """Step 3: the watermark never goes back; idleness is the latest word."""
        self.grow(partition + 1)
        old = self.entries[partition]
        if old is not None and old.watermark > announced.watermark:
            announced = Announced(old.watermark, announced.idle)
        self.entries[partition] = announced

    def watermark(self) -> int | None:
        """Step 4: the minimum over upstream partitions not idle (an unannounced one is
        at `NO_TIME`); None when every one is idle."""
        active = [NO_TIME if e is None else e.watermark for e in self.entries if not (e and e.idle)]
        return min(active) if active else None

    def reached(self) -> int:
        """The lowest watermark an upstream partition has announced (`NO_TIME`: none)."""
        return min(self._announced(), default=NO_TIME)

    def flushed(self) -> int:
        """The highest watermark an upstream partition has announced (`NO_TIME`: none):
        where the partition is once every upstream partition is idle."""
        return max(self._announced(), default=NO_TIME)

    def _announced(self) -> list[int]:
        return [e.watermark for e in self.entries if e and e.watermark > NO_TIME]

    def encode(self) -> str:
        """Offset metadata: ``{"b": base, "u": unit, "w": [code, ...]}``, one code per
        upstream partition: null if it announced nothing, -1 if idle without a
        watermark, else ``2 * ((watermark - base) // unit) + idle``. The smallest unit
        that fits `METADATA_LIMIT`: exact (1 ms) unless the table is very large."""
        for unit in UNITS:
            text = self.encode_in(unit)
            if len(text) <= METADATA_LIMIT:
                return text
        raise AssertionError(f"{len(self.entries)} upstream partitions exceed {MAX_UPSTREAM}")

    def encode_in(self, unit: int) -> str:
        """The table encoded with watermarks rounded down to ``unit`` ms."""
        known = [e.watermark for e in self.entries if e and e.watermark > NO_TIME]
        base = min(known, default=0)
        codes = [_code(e, base, unit) for e in self.entries]
        return orjson.dumps({"b": base, "u": unit, "w": codes}).decode()

    @classmethod
    def decode(cls, text: str | None, count: int) -> UpstreamTable:
        """A table from offset metadata; empty (nothing announced) when there is none or
        it is not Weir's."""
        if not text:
            return cls(count)
        try:
            return cls.from_data(orjson.loads(text), count)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("ignoring offset metadata %r: not a watermark table (%s)", text[:80], exc)
            return cls(count)

    @classmethod
    def from_data(cls, data: dict[str, Any], count: int) -> UpstreamTable:
        base, unit = data["b"], data["u"]
        return cls(count, [_entry(code, base, unit) for code in data["w"]])


class UpstreamTables:
    """What every upstream topic announced into one repartition partition: one
    `UpstreamTable` per topic writing into it (several behind a union), in the
    channel's order. The partition's watermark is the minimum over all their
    partitions not idle, as a task's is over all its input channels."""

    __slots__ = ("tables",)

    def __init__(self, tables: dict[str, UpstreamTable]) -> None:
        self.tables = tables

    def of(self, topic: str) -> UpstreamTable:
        return self.tables[topic]

    def watermark(self) -> int | None:
        """Step 4 over every upstream topic; None when every partition of each is idle."""
        active = [wm for t in self.tables.values() if (wm := t.watermark()) is not None]
        return min(active) if active else None

    def reached(self) -> int:
        """The lowest watermark any upstream partition announced (`NO_TIME`: none)."""
        return min((r for t in self.tables.values() if (r := t.reached()) > NO_TIME),
                   default=NO_TIME)  # fmt: skip

    def flushed(self) -> int:
        """The highest watermark any upstream partition announced (`NO_TIME`: none)."""
        return max((t.flushed() for t in self.tables.values()), default=NO_TIME)

    def encode(self) -> str:
        """Offset metadata: one topic's table as `UpstreamTable.encode`; several as
        ``{"m": [table, ...]}`` in the channel's order, all rounded to the smallest
        unit that fits `METADATA_LIMIT` together."""
        tables = list(self.tables.values())
        if len(tables) == 1:
            return tables[0].encode()
        for unit in UNITS:
            text = '{"m":[' + ",".join(t.encode_in(unit) for t in tables) + "]}"
            if len(text) <= METADATA_LIMIT:
                return text
        raise AssertionError(f"{sum(len(t.entries) for t in tables)} upstream partitions"
                             f" exceed {MAX_UPSTREAM}")  # fmt: skip

    @classmethod
    def decode(cls, text: str | None, counts: dict[str, int]) -> UpstreamTables:
        """Tables from offset metadata, for the upstream topics ``counts`` names (in the
        channel's order) with their partition counts; empty ones when there is none or
        it is not Weir's."""
        if len(counts) == 1:
            ((topic, count),) = counts.items()
            return cls({topic: UpstreamTable.decode(text, count)})
        empty = cls({topic: UpstreamTable(count) for topic, count in counts.items()})
        if not text:
            return empty
        try:
            parts = orjson.loads(text)["m"]
            if len(parts) != len(counts):
                raise ValueError(f"{len(parts)} tables for {len(counts)} upstream topics")
            return cls({
                topic: UpstreamTable.from_data(data, count)
                for (topic, count), data in zip(counts.items(), parts, strict=True)
            })  # fmt: skip
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring offset metadata %r: not watermark tables (%s)", text[:80], exc)
            return empty


def _code(entry: Announced | None, base: int, unit: int) -> int | None:
    if entry is None or (entry.watermark == NO_TIME and not entry.idle):
        return None
    if entry.watermark == NO_TIME:
        return -1
    return 2 * ((entry.watermark - base) // unit) + entry.idle


def _entry(code: int | None, base: int, unit: int) -> Announced | None:
    if code is None:
        return None
    if code < 0:
        return Announced(NO_TIME, True)
    return Announced(base + (code >> 1) * unit, bool(code & 1))


@dataclass
class ChannelCheckpoint:
    """What checkpoint N carries for watermarks: the control records to write before
    its commit (step 2), what they announce, and the tables to commit (step 5)."""

    records: list[tuple[str, int, bytes]]  # (repartition topic, partition, value)
    announced: dict[tuple[str, str, int], Announced]  # (topic R, topic U, partition of U)
    metadata: dict[TopicPartitionKey, str]  # repartition partition -> its encoded table

    def write(self, producer: Any) -> None:
        """Step 2, on the worker's producer, into the open transaction."""
        for topic, partition, value in self.records:
            while True:
                try:
                    producer.produce(topic, value, None, partition=partition, headers=HEADERS)
                    break
                except BufferError:
                    producer.poll(0.05)


# what the tracker says of the owned upstream partitions, and the watermark of each topic
Values = tuple[dict[TopicPartitionKey, Announced], dict[str, int]]


class WatermarkChannels:
    """One worker's side of every watermark channel of its job: the announcements it
    has committed as an upstream writer, the tables of the repartition partitions it
    reads (steps above)."""

    def __init__(
        self,
        channels: Iterable[WatermarkChannel],
        partitions: dict[str, int],
        values: Callable[[], Values] = lambda: ({}, {}),
    ) -> None:
        self.channels = tuple(channels)
        self.partitions = partitions  # topic -> partition count, kept current by the worker
        self.values = values
        self.upstream_of: dict[str, tuple[str, ...]] = {}  # topic R -> its topics U, in order
        for c in self.channels:
            ups = self.upstream_of.get(c.topic, ())
            if c.upstream not in ups:
                self.upstream_of[c.topic] = (*ups, c.upstream)
        self.tables: dict[TopicPartitionKey, UpstreamTables] = {}
        self._encoded: dict[TopicPartitionKey, str] = {}
        # committed: (topic R, topic U, partition of U) -> what was announced
        self.sent: dict[tuple[str, str, int], Announced] = {}

    def __bool__(self) -> bool:
        return bool(self.channels)

    @property
    def topics(self) -> frozenset[str]:
        """The repartition topics whose records include control records."""
        return frozenset(self.upstream_of)

    def check(self) -> str | None:
        """Why the tables of some repartition topic cannot be committed (too many
        upstream partitions in all), or None."""
        for topic, ups in self.upstream_of.items():
            count = sum(self.partitions.get(u, 0) for u in ups)
            if count > MAX_UPSTREAM:
                written = " and ".join(repr(u) for u in ups)
                return (
                    f"{written} {'has' if len(ups) == 1 else 'have'} {count} partitions; a"
                    f" repartition topic behind {'it' if len(ups) == 1 else 'them'}"
                    f" ({topic!r}) carries the watermarks of at most {MAX_UPSTREAM}"
                    " upstream partitions"
                )
        return None

    # -- downstream: steps 3 and 5 ------------------------------------------------------
    def observe(self, records: Iterable[tuple[TopicPartitionKey, bytes]]) -> None:
        """Step 3: control records read from repartition partitions, in order."""
        for tp, value in records:
            try:
                data = orjson.loads(value)
                upstream, count = data["t"], data["n"]
                entries = [(p, Announced(wm, bool(idle))) for p, wm, idle in data["w"]]
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.warning("ignoring a malformed watermark record in %s[%d]: %s", *tp, exc)
                continue
            if upstream not in self.upstream_of.get(tp[0], ()):
                log.warning("ignoring a watermark record in %s[%d] from %r, which this job"
                            " does not write there", *tp, upstream)  # fmt: skip
                continue
            tables = self.tables.get(tp)
            if tables is None:
                tables = self.tables[tp] = self._empty(tp[0])
            table = tables.of(upstream)
            table.grow(count)
            for p, announced in entries:
                table.merge(p, announced)
            self._encoded.pop(tp, None)

    def load(self, tp: TopicPartitionKey, metadata: str | None) -> None:
        """The table committed with ``tp``'s offset, in place of any other (on
        assignment and rollback)."""
        if tp[0] in self.upstream_of:
            self.tables[tp] = UpstreamTables.decode(metadata, self._counts(tp[0]))
            self._encoded.pop(tp, None)

    def loaded(self, tp: TopicPartitionKey) -> bool:
        """Is ``tp``'s table known (or is it a partition without one)?"""
        return tp[0] not in self.upstream_of or tp in self.tables

    def table(self, tp: TopicPartitionKey) -> UpstreamTables | None:
        """What ``tp``'s upstream partitions announced; None before it is known."""
        return self.tables.get(tp)

    def describe(self) -> dict[str, dict[str, Any]]:
        """For /status, per repartition partition read: its watermark by its upstream
        (None: every upstream partition idle), and the upstream partitions holding it
        there or never heard from."""
        out = {}
        for (topic, p), tables in list(self.tables.items()):
            wm = tables.watermark()
            held: dict[str, list[int]] = {}
            unheard: dict[str, list[int]] = {}
            for upstream, table in list(tables.tables.items()):
                entries = list(table.entries)
                held[upstream] = [u for u, e in enumerate(entries) if wm is not None and e
                                  and not e.idle and e.watermark == wm]  # fmt: skip
                unheard[upstream] = [u for u, e in enumerate(entries) if e is None]
            out[f"{topic}-{p}"] = {"watermark": wm, "held_by": held, "unheard": unheard}
        return out

    def _counts(self, topic: str) -> dict[str, int]:
        """The partition counts of ``topic``'s upstream topics, in the channel's order."""
        return {u: self.partitions.get(u, 0) for u in self.upstream_of[topic]}

    def _empty(self, topic: str) -> UpstreamTables:
        return UpstreamTables({u: UpstreamTable(n) for u, n in self._counts(topic).items()})

    # -- upstream: steps 1 and 2 -------------------------------------------------------
    def checkpoint(self) -> ChannelCheckpoint:
        """Step 1, at the barrier: the announcements to write and the tables to commit."""
        values, watermarks = self.values()
        records: list[tuple[str, int, bytes]] = []
        announced: dict[tuple[str, int], Announced] = {}
        for channel in self.channels:
            mine = self._announcements(channel, values, watermarks)
            key = (channel.topic, channel.upstream)
            announced.update(((*key, p), a) for p, a in mine)
            if mine and any(self._news((*key, p), a) for p, a in mine):
                count = self.partitions.get(channel.upstream, 0)
                value = orjson.dumps(
                    {"t": channel.upstream, "n": count, "w": [[p, *a] for p, a in mine]}
                )
                for r in range(self.partitions.get(channel.topic, 0)):
                    records.append((channel.topic, r, value))
        metadata = {}
        for tp, table in self.tables.items():
            text = self._encoded.get(tp)
            if text is None:
                text = self._encoded[tp] = table.encode()
            metadata[tp] = text
        return ChannelCheckpoint(records, announced, metadata)

    def _announcements(
        self, channel: WatermarkChannel, values: dict[TopicPartitionKey, Announced],
        watermarks: dict[str, int],
    ) -> list[tuple[int, Announced]]:  # fmt: skip
        """This worker's partitions of the channel's upstream topic, as announced."""
        out = []
        for (topic, p), a in sorted(values.items()):
            if topic != channel.upstream:
                continue
            if channel.timed:
                a = Announced(min(a.watermark, watermarks.get(topic, NO_TIME)), a.idle)
            if a.watermark > NO_TIME or a.idle or (channel.topic, topic, p) in self.sent:
                out.append((p, a))  # nothing to say only if never said anything
        return out

    def _news(self, key: tuple[str, str, int], a: Announced) -> bool:
        sent = self.sent.get(key)
        return sent is None or a.idle != sent.idle or a.watermark > sent.watermark

    def committed(self, checkpoint: ChannelCheckpoint) -> None:
        """Checkpoint N committed: its announcements are what the downstream knows."""
        for key, a in checkpoint.announced.items():
            sent = self.sent.get(key)
            if sent is not None and sent.watermark > a.watermark:
                a = Announced(sent.watermark, a.idle)
            self.sent[key] = a

    # -- ownership ---------------------------------------------------------------------
    def forget(self, partitions: Iterable[TopicPartitionKey]) -> None:
        """Partitions given up: their tables (downstream) and what was announced for
        them (upstream), so that owning them again starts afresh."""
        for tp in partitions:
            self.tables.pop(tp, None)
            self._encoded.pop(tp, None)
            for channel in self.channels:
                if channel.upstream == tp[0]:
                    self.sent.pop((channel.topic, tp[0], tp[1]), None)
