"""The operators plans are made of, and the logical plan a job records.

A job file records a `Dataflow` through the `Stream` API: typed, immutable
operators (`Source`, `Map`, `KeyBy`, `Window`, …) and which one feeds which,
one tree per source. `weir.operators.physical.compile_plan` binds it to a consumer
group and builds the physical plan the runtime runs; there each ``key_by``
becomes a `RecordKey`, a `HashExchange` or a `Repartition` (with a
`RepartitionSource` reading its topic), the operators only a physical plan
holds.

The runtime cuts a physical plan into *segments* at exchanges (an operator
after which records move between slots: ``key_by(fn)``, ``rebalance``,
``shuffle``, ``broadcast``); everything between two exchanges is chained
inside one slot thread with no queue in between, as in Flink's operator
chaining.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from weir.operators.formats import Serde
from weir.operators.windows import WindowSpec

if TYPE_CHECKING:
    from weir.operators.broadcast import KeyedBroadcastProcessFunction
    from weir.operators.process import KeyedProcessFunction


DEFAULT_MAX_FUTURE_S = 86400.0  # an event time further ahead than a day is a mistake


class Partitioner(StrEnum):
    """How records reach the next operator (Flink's names).

    FORWARD and RESCALE keep records in their slot: every stage inside a worker
    runs with parallelism = slots, and with equal parallelism Flink's rescale is
    one-to-one. HASH is ``key_by(fn)``'s exchange inside a worker.
    """

    FORWARD = "forward"
    REBALANCE = "rebalance"
    SHUFFLE = "shuffle"
    RESCALE = "rescale"
    BROADCAST = "broadcast"
    HASH = "hash"


EXCHANGING = frozenset(
    {Partitioner.REBALANCE, Partitioner.SHUFFLE, Partitioner.BROADCAST, Partitioner.HASH}
)


class ErrorPolicy(StrEnum):
    """What happens to a record that fails to decode or whose function raises."""

    DLQ = "dlq"  # sent to ``<group>.dlq`` with the error
    SKIP = "skip"  # counted and logged only
    FAIL = "fail"  # the worker stops with the error


class WindowFunctionKind(StrEnum):
    """What a window computes over its contents."""

    AGGREGATE = "aggregate"
    REDUCE = "reduce"
    PROCESS = "process"


_operator = dataclass(frozen=True, kw_only=True, eq=False)


@_operator
class Op:
    """One operator of a plan; ``id`` and ``name`` are unique within its job.

    ``kind`` is how plans and error messages call it. ``auto_named``: the job gave
    no ``name=``, so the name is the generated ``<kind>-<n>``, where ``n`` counts the
    operators defined before it — adding one earlier in the job renames it (and a
    stateful operator's state is found by its name).
    """

    kind: ClassVar[str]
    id: int
    name: str
    auto_named: bool = False

    @property
    def exchanges(self) -> bool:
        """True when records leave their slot after this operator (a segment boundary)."""
        return False

    @property
    def wants_meta(self) -> bool:
        """Do this operator's functions take record metadata (``with_meta=True``)?"""
        return False

    def describe(self) -> str:
        return f"{self.name}: {self.kind}{self._details()}"

    def _details(self) -> str:
        return ""


# -- the operators a job records ---------------------------------------------------


@_operator
class MetaOp(Op):
    """An operator whose function may take record metadata: ``fn(value, meta)``."""

    with_meta: bool = False

    @property
    def wants_meta(self) -> bool:
        return self.with_meta

    def _details(self) -> str:
        return " (with meta)" if self.with_meta else ""


@_operator
class Source(Op):
    """Reads a topic the job's author named; ``timestamp`` extracts event time (epoch
    ms) from a decoded value (None: the Kafka record timestamp). ``key_format``
    decodes record keys (None: keys stay bytes)."""

    kind = "source"
    topic: str
    value: Serde
    key_format: Serde | None = None
    timestamp: Callable[[Any], int] | None
    max_out_of_orderness: float  # seconds
    idle_timeout: float | None  # seconds
    max_future: float | None = DEFAULT_MAX_FUTURE_S  # seconds ahead of the wall clock
    table: bool = False  # a table's topic: keyed by the record key, a None value deletes

    def _details(self) -> str:
        key = "" if self.key_format is None else f" key={self.key_format!r}"
        what = "table " if self.table else ""
        return f" {what}topic={self.topic} value={self.value!r}{key}"


@_operator
class Map(MetaOp):
    kind = "map"
    fn: Callable[..., Any]


@_operator
class Filter(MetaOp):
    kind = "filter"
    fn: Callable[..., bool]


@_operator
class FlatMap(MetaOp):
    kind = "flat_map"
    fn: Callable[..., Any]


@_operator
class KeyBy(MetaOp):
    """Partition by ``fn(value)``, or by the Kafka record key when ``fn`` is None."""

    kind = "key_by"
    fn: Callable[[Any], Any] | None
    partitions: int | None  # of the repartition topic, when one is needed

    @property
    def exchanges(self) -> bool:
        return self.fn is not None

    def _details(self) -> str:
        return (" (record key)" if self.fn is None else " (hash exchange)") + super()._details()


@_operator
class Partition(Op):
    kind = "partition"
    partitioner: Partitioner

    @property
    def exchanges(self) -> bool:
        return self.partitioner in EXCHANGING

    def _details(self) -> str:
        return f" {self.partitioner}"


@_operator
class Sink(MetaOp):
    """Writes to ``topic``, keyed by ``key(value)`` if given, else by the element's key;
    ``key_format`` encodes keys (None: bytes as is, str as UTF-8, else JSON);
    ``headers(value)`` gives each record's Kafka headers. With ``with_meta`` both
    functions take ``(value, meta)``."""

    kind = "sink"
    topic: str
    value: Serde
    key: Callable[..., Any] | None
    key_format: Serde | None = None
    headers: Callable[..., Any] | None = None

    def _details(self) -> str:
        key = "" if self.key_format is None else f" key={self.key_format!r}"
        return f" topic={self.topic} value={self.value!r}{key}{super()._details()}"


@_operator
class Union(Op):
    """Merges several streams into one. Its inputs may come from different parts of
    the slot's chain (sources, exchanges), so its output is an input of the slot of
    its own, aligned on a channel per stream (`inputs` names them)."""

    kind = "union"
    inputs: tuple[str, ...]

    @property
    def exchanges(self) -> bool:
        return True

    def _details(self) -> str:
        return f" of {', '.join(self.inputs)}"


@_operator
class StatefulOp(Op):
    """An operator with keyed state: it needs every key's records in one input partition."""


@_operator
class MultiInputOp(StatefulOp):
    """A keyed operator with several inputs, its *sides* (``sides`` names the operator
    feeding each, in order). Every side is written, by its key, to the operator's own
    topic ``<group>.<name>.repartition`` (`SideRepartition`), which one
    `MergedSource` reads: its state follows that topic's partitions, whatever the
    inputs' partitioning was, and the topic fixes the order in which the operator
    sees the records of all sides, for good (replays see the same order)."""

    sides: tuple[str, ...]
    partitions: int | None  # of its topic; None: as many as its first side's source
    broadcast_sides: ClassVar[tuple[int, ...]] = ()  # sides written to every partition


@_operator
class JoinTable(MultiInputOp):
    """A stream (side 0) joined with a table (side 1) as of each record's event time."""

    kind = "join_table"
    how: str  # "inner" | "left"
    fn: Callable[[Any, Any], Any] | None  # (stream value, table value) -> output
    table: str  # the table's topic

    def _details(self) -> str:
        return f" how={self.how} of {self.sides[0]} with table {self.table}"


@_operator
class WindowJoin(MultiInputOp):
    """Two keyed streams (sides 0 and 1) joined per key and event-time window: ``fn``
    per pair (``function="apply"``) or over both sides' records (``"process"``)."""

    kind = "window_join"
    spec: WindowSpec
    how: str  # "inner" | "left" | "full"
    function: str  # "apply" | "process"
    fn: Callable[..., Any] | None
    lateness_ms: int

    def _details(self) -> str:
        return f" how={self.how} {self.spec!r} {self.function} of {self.sides[0]}, {self.sides[1]}"


@_operator
class IntervalJoin(MultiInputOp):
    """Each record of side 0 with the records of side 1 of its key whose event times lie
    in ``[t + lower_ms, t + upper_ms]``."""

    kind = "interval_join"
    lower_ms: int
    upper_ms: int
    fn: Callable[[Any, Any], Any] | None

    def _details(self) -> str:
        bounds = f"[{self.lower_ms / 1000:+g}s, {self.upper_ms / 1000:+g}s]"
        return f" {bounds} of {self.sides[0]} with {self.sides[1]}"


@_operator
class BroadcastProcess(MultiInputOp):
    """A keyed stream (side 0) connected with a broadcast stream (side 1), run by a
    `KeyedBroadcastProcessFunction`."""

    kind = "broadcast_process"
    fn: KeyedBroadcastProcessFunction
    broadcast_sides: ClassVar[tuple[int, ...]] = (1,)

    def _details(self) -> str:
        return f" of {self.sides[0]} with broadcast {self.sides[1]}"


@_operator
class Reduce(StatefulOp):
    kind = "reduce"
    fn: Callable[[Any, Any], Any]


@_operator
class Aggregate(StatefulOp):
    kind = "aggregate"
    fields: Mapping[str, Any]  # field name -> aggregate spec (see `weir.operators.aggregates`)


@_operator
class Window(StatefulOp):
    """Event-time windows; ``fn`` (reduce, process) or ``fields`` (aggregate) say what
    each window computes."""

    kind = "window"
    spec: WindowSpec
    function: WindowFunctionKind
    fn: Callable[..., Any] | None
    fields: Mapping[str, Any] | None
    lateness_ms: int
    late_topic: str | None

    def _details(self) -> str:
        return f" {self.spec!r} {self.function}"


@_operator
class Process(StatefulOp):
    kind = "process"
    fn: KeyedProcessFunction


# -- the operators compile_plan puts in place of key_by and sources -----------------


@_operator
class RecordKey(Op):
    """``key_by()``: the Kafka record key is the key; records stay where they are."""

    kind = "key_by"

    def _details(self) -> str:
        return " (record key)"


@_operator
class HashExchange(MetaOp):
    """``key_by(fn)`` with no keyed state after it: records move to the slot owning
    their key, inside the worker."""

    kind = "key_by"
    fn: Callable[..., Any]

    @property
    def exchanges(self) -> bool:
        return True

    @property
    def partitioner(self) -> Partitioner:
        return Partitioner.HASH

    def _details(self) -> str:
        return " (hash exchange)" + super()._details()


@_operator
class Repartition(MetaOp):
    """``key_by(fn)`` before keyed state: writes ``[key, value]`` to ``topic``, keyed by
    the key, which a `RepartitionSource` reads. It ends its branch."""

    kind = "key_by"
    fn: Callable[..., Any]
    topic: str

    def _details(self) -> str:
        return f" -> repartition topic {self.topic}" + super()._details()


@_operator
class RepartitionSource(Op):
    """Reads a repartition topic. Its records carry the event time as their timestamp;
    its watermark is what the workers reading ``upstream`` announce into it
    (`weir.service.repartition_watermarks`)."""

    kind = "source"
    topic: str
    upstream: str  # the topic the key_by read from
    partitions: int | None  # key_by(partitions=…); None: as many as ``upstream``

    def _details(self) -> str:
        return f" topic={self.topic} value=repartition"


@_operator
class Rekey(MetaOp):
    """``key_by(fn)`` feeding only operators with several inputs, which repartition
    their inputs themselves: each element's key becomes ``fn(value)`` in place."""

    kind = "key_by"
    fn: Callable[..., Any]

    def _details(self) -> str:
        return " (key set in place)" + super()._details()


@_operator
class SideRepartition(MetaOp):
    """One side of a `MultiInputOp`: writes ``[side, key, value]`` to the operator's
    topic, keyed by ``fn(value)`` (None: the element's key; a table's record key),
    with the event time as the record timestamp — or, a ``broadcast`` side, without
    a key to every partition of it. It ends its branch."""

    kind = "key_by"
    fn: Callable[[Any], Any] | None
    topic: str
    side: int
    target: str  # the multi-input operator's name
    broadcast: bool = False

    def _details(self) -> str:
        how = "to every partition of" if self.broadcast else "via"
        meta = super()._details()
        return f" -> {self.target} side {self.side} {how} topic {self.topic}{meta}"


@_operator
class MergedSource(RepartitionSource):
    """Reads a `MultiInputOp`'s topic. Its partitions' watermark is the minimum over the
    sides (`operators.sides`): ``clocks`` holds each side's (max_out_of_orderness,
    idle_timeout) in seconds, inherited from the sources upstream of it; its own
    ``max_out_of_orderness`` and ``idle_timeout`` are those of the partitions as a
    whole (each side's disorder is applied per side). What the sides have shown is
    kept in the operator's state ``clock_state``, so a partition's clocks move with it."""

    max_out_of_orderness: float
    idle_timeout: float | None
    clocks: tuple[tuple[float, float | None], ...]
    clock_state: str

    def _details(self) -> str:
        return f" topic={self.topic} value=sides of {len(self.clocks)} inputs"


# -- the logical plan ------------------------------------------------------------


class Dataflow:
    """What a job recorded: its sources and, per operator, the operators it feeds.

    A `Union` is the one operator with several inputs, so the dataflow is a DAG:
    `walk` and `ops` visit an operator once, however many paths lead to it.
    """

    def __init__(self) -> None:
        self._sources: list[Source] = []
        self._children: dict[int, list[Op]] = {}

    @property
    def sources(self) -> tuple[Source, ...]:
        return tuple(self._sources)

    def add_source(self, source: Source) -> None:
        self._children[source.id] = []
        self._sources.append(source)

    def add(self, op: Op, *after: Op) -> None:
        """Record ``op`` downstream of ``after`` (several: a union's inputs)."""
        self._children[op.id] = []
        for parent in after:
            self._children[parent.id].append(op)

    def children(self, op: Op) -> tuple[Op, ...]:
        return tuple(self._children[op.id])

    def walk(self, op: Op, seen: set[int] | None = None) -> list[Op]:
        """``op`` and everything downstream of it, depth first, each once (``seen``:
        operators already visited, skipped)."""
        seen = set() if seen is None else seen
        if op.id in seen:
            return []
        seen.add(op.id)
        out = [op]
        for child in self._children[op.id]:
            out.extend(self.walk(child, seen))
        return out

    def ops(self) -> list[Op]:
        """Every operator once, sources first, depth first."""
        seen: set[int] = set()
        return [op for source in self._sources for op in self.walk(source, seen)]

    def feeds_state(self, op: Op) -> bool:
        """Does keyed state with one input follow ``op`` before any other exchange?
        (An operator with several inputs repartitions each of them itself.)"""
        return any(
            (isinstance(child, StatefulOp) and not isinstance(child, MultiInputOp))
            or (not child.exchanges and not isinstance(child, StatefulOp)
                and self.feeds_state(child))
            for child in self._children[op.id]
        )  # fmt: skip
