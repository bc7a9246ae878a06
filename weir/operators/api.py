"""The job API: `Job`, `Stream` and `KeyedStream`.

This is all a job file sees. Calls only record the dataflow (the logical plan,
`weir.operators.plan.Dataflow`); nothing runs until ``weir run`` hands the job to a
worker, which compiles it for its consumer group (`weir.operators.physical`).
Arguments are validated here, at definition time, so a bad job fails before it
touches Kafka, with a message naming the bad value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from types import MappingProxyType
from typing import Any, TypeVar

from weir.operators.aggregates import compile_aggregates
from weir.operators.broadcast import KeyedBroadcastProcessFunction
from weir.operators.exceptions import JobDefinitionError
from weir.operators.formats import Serde, check_format, check_writable
from weir.operators.plan import (
    DEFAULT_MAX_FUTURE_S,
    Aggregate,
    BroadcastProcess,
    Dataflow,
    ErrorPolicy,
    Filter,
    FlatMap,
    IntervalJoin,
    JoinTable,
    KeyBy,
    Map,
    MultiInputOp,
    Op,
    Partition,
    Partitioner,
    Process,
    Reduce,
    Sink,
    Source,
    StatefulOp,
    Union,
    Window,
    WindowFunctionKind,
    WindowJoin,
)
from weir.operators.process import KeyedProcessFunction
from weir.operators.windows import Session, WindowSpec
from weir.state.keygroups import DEFAULT_MAX_KEY_GROUPS

ERROR_POLICIES = tuple(p.value for p in ErrorPolicy)
TABLE_IDLE_TIMEOUT_S = 5.0  # a table is quiet most of the time: see Job.table
_O = TypeVar("_O", bound=Op)
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise JobDefinitionError(
            f"{what} {name!r} is not valid; expected a non-empty string of letters, digits,"
            " '.', '_' or '-' (it is used in Kafka topic names)"
        )
    return name


def _flag(value: Any, method: str) -> bool:
    if not isinstance(value, bool):
        raise JobDefinitionError(f"{method}(with_meta={value!r}): expected True or False")
    return value


def _check_callable(fn: Any, method: str) -> Callable[..., Any]:
    if not callable(fn):
        raise JobDefinitionError(f"{method}() needs a function, got {fn!r}")
    return fn


def _check_partitions(partitions: Any, method: str) -> None:
    if partitions is not None and (
        isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1
    ):
        raise JobDefinitionError(f"{method}(partitions={partitions!r}): expected an int >= 1")


class Job:
    """A named dataflow. A job file defines one at module level as ``job``.

    ``on_error`` is what happens to a record that fails to decode or whose
    function raises: ``"dlq"`` (default: sent to ``<group>.dlq`` with the
    error), ``"skip"`` (counted and logged only) or ``"fail"`` (the worker
    stops with the error).
    """

    def __init__(
        self, name: str, *, on_error: str = "dlq", max_key_groups: int = DEFAULT_MAX_KEY_GROUPS
    ) -> None:
        self.name = _check_name(name, "job name")
        if on_error not in ERROR_POLICIES:
            raise JobDefinitionError(
                f"on_error={on_error!r} is not a policy; expected one of {ERROR_POLICIES}"
            )
        if not isinstance(max_key_groups, int) or not 1 <= max_key_groups <= 32768:
            raise JobDefinitionError(
                f"max_key_groups={max_key_groups!r}; expected an int from 1 to 32768"
            )
        self.on_error = ErrorPolicy(on_error)
        self.max_key_groups = max_key_groups
        self._dataflow = Dataflow()
        self._next_id = 0
        self._names: set[str] = set()

    @property
    def dataflow(self) -> Dataflow:
        """The operators recorded so far. `weir.operators.physical.compile_plan` reads it to
        build what runs; nothing changes it but the `Stream` methods."""
        return self._dataflow

    def source(
        self,
        topic: str,
        *,
        value: str | Serde = "json",
        key_format: str | Serde | None = None,
        timestamp: Callable[[Any], int] | None = None,
        max_out_of_orderness: float = 0.0,
        idle_timeout: float | None = None,
        max_future: float | None = DEFAULT_MAX_FUTURE_S,
        name: str | None = None,
    ) -> Stream:
        """Read ``topic``. ``value`` is the values' format: ``"json"``, ``"bytes"``,
        ``"str"`` or a `Serde` (e.g. ``Avro()`` with a schema registry);
        ``key_format`` decodes record keys the same way (None: keys stay bytes).
        A record that fails to decode goes to the dead-letter topic (reason ``decode``).

        ``timestamp`` extracts a record's event time (epoch ms) from its
        decoded value; by default the Kafka record timestamp is used.
        ``max_out_of_orderness`` (seconds) and ``idle_timeout`` (seconds)
        describe the source's disorder and idleness for watermarks.
        ``max_future`` (seconds, default a day; None: no limit): a record whose
        event time is further ahead of the wall clock is a mistake (seconds for
        milliseconds, a broken clock): it goes to the dead-letter topic with reason
        ``future`` and never moves the watermark.
        """
        return Stream(
            self,
            self._source(
                "source", topic, value, key_format, timestamp, max_out_of_orderness,
                idle_timeout, max_future, name,
            ),
        )  # fmt: skip

    def table(
        self,
        topic: str,
        *,
        value: str | Serde = "json",
        key_format: str | Serde | None = None,
        timestamp: Callable[[Any], int] | None = None,
        max_out_of_orderness: float = 0.0,
        idle_timeout: float | None = TABLE_IDLE_TIMEOUT_S,
        max_future: float | None = DEFAULT_MAX_FUTURE_S,
        name: str | None = None,
    ) -> Table:
        """Read ``topic`` (normally compacted) as a table: the latest value per Kafka
        record key, a ``None`` value (tombstone) deleting the key. Join streams with
        it through `KeyedStream.join_table`.

        Every update is a version of its key's value from its event time on
        (``timestamp(value)``, default the Kafka timestamp). The other arguments are
        `source`'s; ``idle_timeout`` defaults to 5 s, since a table is quiet most of
        the time and a quiet table must not hold the joins' watermark back.
        """
        op = self._source(
            "table", topic, value, key_format, timestamp, max_out_of_orderness,
            idle_timeout, max_future, name, table=True,
        )  # fmt: skip
        return Table(self, op)

    def _source(
        self,
        what: str,
        topic: str,
        value: str | Serde,
        key_format: str | Serde | None,
        timestamp: Callable[[Any], int] | None,
        max_out_of_orderness: float,
        idle_timeout: float | None,
        max_future: float | None,
        name: str | None,
        table: bool = False,
    ) -> Source:
        """Validate a source's (or a table's) arguments and record it."""
        _check_name(topic, f"{what} topic")
        fmt = check_format(value, f"{what}({topic!r})")
        key_fmt = (
            None
            if key_format is None
            else check_format(key_format, f"{what}({topic!r})", "key_format")
        )
        if timestamp is not None:
            _check_callable(timestamp, f"{what}(timestamp=…)")
        if not isinstance(max_out_of_orderness, int | float) or max_out_of_orderness < 0:
            raise JobDefinitionError(
                f"max_out_of_orderness={max_out_of_orderness!r}; expected seconds >= 0"
            )
        if idle_timeout is not None and (
            not isinstance(idle_timeout, int | float) or idle_timeout <= 0
        ):
            raise JobDefinitionError(f"idle_timeout={idle_timeout!r}; expected seconds > 0")
        if max_future is not None and (
            not isinstance(max_future, int | float)
            or isinstance(max_future, bool)
            or max_future < 0
        ):
            raise JobDefinitionError(f"max_future={max_future!r}; expected seconds >= 0 or None")
        return self._add(
            Source,
            name or f"{what}-{topic}",
            None,
            topic=topic,
            value=fmt,
            key_format=key_fmt,
            timestamp=timestamp,
            max_out_of_orderness=float(max_out_of_orderness),
            idle_timeout=idle_timeout,
            max_future=None if max_future is None else float(max_future),
            table=table,
        )

    def validate(self) -> None:
        """Check the job is runnable as a whole: it reads, it writes, and keyed state
        gets its records partitioned by key. Loading a job file calls this."""
        flow = self._dataflow
        if not flow.sources:
            raise JobDefinitionError(f"job {self.name!r} has no source; call job.source(topic)")
        if not any(isinstance(op, Sink) for op in flow.ops()):
            raise JobDefinitionError(
                f"job {self.name!r} has no sink; end a stream with .sink(topic)"
            )
        for source in flow.sources:
            self._check_stateful(source, exchanged=None)

    def _check_stateful(self, op: Op, exchanged: Op | None) -> None:
        """Keyed state needs every key's records in one input partition: no exchange (or
        union) before it. An operator with several inputs repartitions them itself."""
        if isinstance(op, MultiInputOp):
            exchanged = None
        elif isinstance(op, StatefulOp) and exchanged is not None:
            how = (
                "which merges streams partitioned differently"
                if isinstance(exchanged, Union)
                else "which moves records between slots"
            )
            raise JobDefinitionError(
                f"{op.name} ({op.kind}) comes after {exchanged.name}, {how}; keyed state"
                " needs records partitioned by its key: put a key_by(fn) right before it"
            )
        if isinstance(op, KeyBy) and op.fn is not None and self._dataflow.feeds_state(op):
            exchanged = None  # a repartition topic re-partitions by the key
        elif op.exchanges:
            exchanged = op
        for child in self._dataflow.children(op):
            self._check_stateful(child, exchanged)

    def _add(
        self, cls: type[_O], name: str | None, after: Op | tuple[Op, ...] | None, **fields: Any
    ) -> _O:
        """Record a new ``cls`` operator after ``after`` (None: a source; several: a
        union's inputs); the default name is ``<kind>-<id>``."""
        ident = self._next_id + 1
        auto_named = name is None
        name = _check_name(name or f"{cls.kind}-{ident}", "operator name")
        if name in self._names:
            raise JobDefinitionError(
                f"operator name {name!r} is used twice in job {self.name!r}; names must be unique"
            )
        self._names.add(name)
        self._next_id = ident
        op = cls(id=ident, name=name, auto_named=auto_named, **fields)
        if after is None:
            self._dataflow.add_source(op)
        elif isinstance(after, tuple):
            self._dataflow.add(op, *after)
        else:
            self._dataflow.add(op, after)
        return op


class Stream:
    """A stream of records; each method adds an operator and returns the new stream."""

    def __init__(self, job: Job, op: Op) -> None:
        self._job = job
        self._op = op

    def _then(self, cls: type[_O], name: str | None, **fields: Any) -> _O:
        return self._job._add(cls, name, self._op, **fields)

    def _same_kind(self, op: Op) -> Stream:
        return type(self)(self._job, op)

    def map(
        self, fn: Callable[..., Any], *, with_meta: bool = False, name: str | None = None
    ) -> Stream:
        """One output per record: ``fn(value)``, or ``fn(value, meta)`` with
        ``with_meta=True`` (`operators.meta.RecordMeta`: key, headers, timestamp,
        topic, partition, offset)."""
        fn = _check_callable(fn, "map")
        return self._same_kind(self._then(Map, name, fn=fn, with_meta=_flag(with_meta, "map")))

    def filter(
        self, fn: Callable[..., bool], *, with_meta: bool = False, name: str | None = None
    ) -> Stream:
        """Keep the records for which ``fn(value)`` (or ``fn(value, meta)``) is true."""
        fn = _check_callable(fn, "filter")
        op = self._then(Filter, name, fn=fn, with_meta=_flag(with_meta, "filter"))
        return self._same_kind(op)

    def flat_map(
        self,
        fn: Callable[..., Iterable[Any]],
        *,
        with_meta: bool = False,
        name: str | None = None,
    ) -> Stream:
        """Zero or more outputs per record: the items of ``fn(value)`` (or
        ``fn(value, meta)``)."""
        fn = _check_callable(fn, "flat_map")
        op = self._then(FlatMap, name, fn=fn, with_meta=_flag(with_meta, "flat_map"))
        return self._same_kind(op)

    def key_by(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        partitions: int | None = None,
        with_meta: bool = False,
        name: str | None = None,
    ) -> KeyedStream:
        """Partition by key. ``fn(value)`` (``fn(value, meta)`` with ``with_meta``)
        extracts the key; without ``fn`` the Kafka record key is the key and records
        stay where they are (Kafka already partitions by it).

        With ``fn``, records move to the owner of their key: to another slot of
        this worker, or — when keyed state follows — through the repartition
        topic ``<group>.<name>.repartition`` (``partitions`` partitions, default
        the source's), so every key is owned by exactly one worker.
        """
        if fn is not None:
            _check_callable(fn, "key_by")
        elif with_meta:
            raise JobDefinitionError("key_by(with_meta=True) needs a function: key_by(fn, …)")
        _check_partitions(partitions, "key_by")
        op = self._then(
            KeyBy, name, fn=fn, partitions=partitions, with_meta=_flag(with_meta, "key_by")
        )
        return KeyedStream(self._job, op)

    def union(self, *others: Stream, name: str | None = None) -> Stream:
        """One stream of this one's records and those of ``others`` (streams of the same
        job, from any sources), in no particular order between them.

        At a checkpoint the union waits for the barrier on every input before it lets
        it pass (Flink's alignment), so each record belongs to one checkpoint. The
        result is not keyed: put a ``key_by(fn)`` after it before keyed state.
        """
        if not others:
            raise JobDefinitionError("union() needs at least one other stream")
        inputs = [self, *others]
        for other in others:
            if not isinstance(other, Stream):
                raise JobDefinitionError(f"union({other!r}): expected a stream of this job")
            if other._job is not self._job:
                raise JobDefinitionError(
                    f"union(): stream {other._op.name!r} belongs to job {other._job.name!r},"
                    f" not {self._job.name!r}"
                )
        ops = tuple(s._op for s in inputs)
        names = tuple(op.name for op in ops)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise JobDefinitionError(f"union(): stream {twice[0]!r} is given twice; each once")
        return Stream(self._job, self._job._add(Union, name, ops, inputs=names))

    def broadcast_state(self) -> BroadcastStream:
        """This stream as the broadcast side of a `KeyedStream.connect`: every record
        reaches every partition of the connected operator, where a
        `KeyedBroadcastProcessFunction` keeps broadcast state from them (README:
        "Broadcast state")."""
        return BroadcastStream(self._job, self._op)

    def _partition(self, partitioner: Partitioner, name: str | None) -> Stream:
        return Stream(self._job, self._then(Partition, name, partitioner=partitioner))

    def forward(self, *, name: str | None = None) -> Stream:
        """Keep records in the slot that produced them (the default)."""
        return self._partition(Partitioner.FORWARD, name)

    def rebalance(self, *, name: str | None = None) -> Stream:
        """Spread records round-robin over all slots (evens out skew)."""
        return self._partition(Partitioner.REBALANCE, name)

    def shuffle(self, *, name: str | None = None) -> Stream:
        """Send each record to a uniformly random slot."""
        return self._partition(Partitioner.SHUFFLE, name)

    def rescale(self, *, name: str | None = None) -> Stream:
        """Flink's rescale: round-robin to a local subset of downstream slots.

        Inside a worker every stage runs on all slots, so upstream and
        downstream parallelism are equal and rescale is one-to-one.
        """
        return self._partition(Partitioner.RESCALE, name)

    def broadcast(self, *, name: str | None = None) -> Stream:
        """Send every record to every slot."""
        return self._partition(Partitioner.BROADCAST, name)

    def sink(
        self,
        topic: str,
        *,
        value: str | Serde = "json",
        key: Callable[..., Any] | None = None,
        key_format: str | Serde | None = None,
        headers: Callable[..., Any] | None = None,
        with_meta: bool = False,
        name: str | None = None,
    ) -> None:
        """Write to ``topic``. ``value`` is the values' format (as for `Job.source`).

        The record key is ``key(value)`` if given, else the stream's key (after
        ``key_by``), else the input record's key; ``key_format`` encodes it
        (default: bytes as they are, str as UTF-8, anything else as JSON).
        ``headers(value)`` returns the record's Kafka headers: a dict or
        ``(name, value)`` pairs, values bytes or str. With ``with_meta=True`` both
        functions are called as ``fn(value, meta)``, e.g. to pass the input's
        headers on: ``headers=lambda v, meta: meta.headers``.
        """
        _check_name(topic, "sink topic")
        fmt = check_format(value, f"sink({topic!r})")
        check_writable(fmt, f"sink({topic!r})")
        key_fmt = (
            None
            if key_format is None
            else check_format(key_format, f"sink({topic!r})", "key_format")
        )
        if key is not None:
            _check_callable(key, "sink(key=…)")
        if headers is not None:
            _check_callable(headers, "sink(headers=…)")
        self._then(
            Sink,
            name or f"sink-{topic}",
            topic=topic,
            value=fmt,
            key=key,
            key_format=key_fmt,
            headers=headers,
            with_meta=_flag(with_meta, "sink"),
        )


class Table:
    """A topic read as a table (`Job.table`): join keyed streams with it."""

    def __init__(self, job: Job, op: Source) -> None:
        self._job = job
        self._op = op

    @property
    def topic(self) -> str:
        return self._op.topic


class BroadcastStream:
    """A stream to broadcast (`Stream.broadcast_state`): connect a keyed stream with it."""

    def __init__(self, job: Job, op: Op) -> None:
        self._job = job
        self._op = op


class ConnectedStreams:
    """A keyed stream connected with a broadcast stream; finish it with `process`."""

    def __init__(self, keyed: KeyedStream, broadcast: BroadcastStream) -> None:
        self._keyed = keyed
        self._broadcast = broadcast

    def process(
        self,
        fn: KeyedBroadcastProcessFunction,
        *,
        partitions: int | None = None,
        name: str | None = None,
    ) -> KeyedStream:
        """Run ``fn``, a `KeyedBroadcastProcessFunction`, over both streams: keyed
        records through ``process_element``, broadcast ones through
        ``process_broadcast_element``, in the order of the operator's topic
        ``<group>.<name>.repartition`` (``partitions`` partitions, default the keyed
        stream source's). What it emits for a key stays keyed."""
        if not isinstance(fn, KeyedBroadcastProcessFunction):
            raise JobDefinitionError(
                f"process({fn!r}): expected an instance of KeyedBroadcastProcessFunction"
            )
        _check_partitions(partitions, "process")
        keyed = self._keyed
        ops = (keyed._op, self._broadcast._op)
        op = keyed._job._add(
            BroadcastProcess, name, ops, sides=tuple(o.name for o in ops),
            partitions=partitions, fn=fn,
        )  # fmt: skip
        return KeyedStream(keyed._job, op)


JOIN_HOWS = ("inner", "left")
WINDOW_JOIN_HOWS = ("inner", "left", "full")


def _check_other(keyed: KeyedStream, other: Any, method: str) -> None:
    """``other`` is another keyed stream of the same job."""
    if not isinstance(other, KeyedStream):
        raise JobDefinitionError(
            f"{method}({other!r}): expected a keyed stream of this job (stream.key_by(...))"
        )
    if other._job is not keyed._job:
        raise JobDefinitionError(
            f"{method}(): stream {other._op.name!r} belongs to job {other._job.name!r}"
        )
    if other._op is keyed._op:
        raise JobDefinitionError(
            f"{method}(): stream {keyed._op.name!r} cannot be joined with itself; join it"
            " with a copy (another key_by or map of it)"
        )


def _seconds(value: Any, what: str) -> int:
    """Seconds (any sign) as milliseconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JobDefinitionError(f"{what}={value!r}: expected seconds (a number)")
    return round(value * 1000)


class JoinedStreams:
    """Two keyed streams to join per window (`KeyedStream.join`); give the window."""

    def __init__(self, left: KeyedStream, right: KeyedStream, how: str) -> None:
        self._left = left
        self._right = right
        self._how = how

    def window(self, spec: WindowSpec, *, allowed_lateness: float = 0.0) -> WindowedJoin:
        """Event-time windows (`Tumbling`, `Sliding` or `Session`) per key. A window
        fires when the watermark passes its end; ``allowed_lateness`` (seconds; not with
        sessions) keeps it for late records, each emitting what it adds."""
        if not isinstance(spec, WindowSpec):
            raise JobDefinitionError(
                f"window({spec!r}): expected Tumbling(...), Sliding(...) or Session(...)"
            )
        lateness = _seconds(allowed_lateness, "allowed_lateness")
        if lateness < 0:
            raise JobDefinitionError(
                f"allowed_lateness={allowed_lateness!r}: expected seconds >= 0"
            )
        if lateness and isinstance(spec, Session):
            raise JobDefinitionError(
                "allowed_lateness with Session windows is not supported for joins: a late"
                " record could merge sessions whose rows were already emitted"
            )
        return WindowedJoin(self, spec, lateness)


class WindowedJoin:
    """Two keyed streams joined per key and window; finish with `apply` or `process`."""

    def __init__(self, joined: JoinedStreams, spec: WindowSpec, lateness_ms: int) -> None:
        self._joined = joined
        self._spec = spec
        self._lateness_ms = lateness_ms

    def _then(
        self, function: str, fn: Callable[..., Any] | None, partitions: int | None, name: str | None
    ) -> KeyedStream:
        _check_partitions(partitions, function)
        left, right = self._joined._left, self._joined._right
        ops = (left._op, right._op)
        op = left._job._add(
            WindowJoin, name, ops, sides=tuple(o.name for o in ops), partitions=partitions,
            spec=self._spec, how=self._joined._how, function=function, fn=fn,
            lateness_ms=self._lateness_ms,
        )  # fmt: skip
        return KeyedStream(left._job, op)

    def apply(
        self,
        fn: Callable[[Any, Any], Any] | None = None,
        *,
        partitions: int | None = None,
        name: str | None = None,
    ) -> KeyedStream:
        """Per key and window, ``fn(left, right)`` for every pair of records (``None``
        for the missing side of an outer row). Default output: ``{"key",
        "window_start", "window_end", "left", "right"}``."""
        if fn is not None:
            _check_callable(fn, "apply")
        return self._then("apply", fn, partitions, name)

    def process(
        self,
        fn: Callable[[Any, tuple[int, int], list, list], Iterable[Any]],
        *,
        partitions: int | None = None,
        name: str | None = None,
    ) -> KeyedStream:
        """Per key and window, ``fn(key, (start, end), lefts, rights)`` over both sides'
        records (in event-time order); each item it returns is emitted. Windows fire as
        ``how`` says: inner — both sides have records; left — the left side has; full —
        either has."""
        return self._then("process", _check_callable(fn, "process"), partitions, name)


class KeyedStream(Stream):
    """A stream partitioned by key: ``map``, ``filter`` and ``flat_map`` keep
    the partitioning (as in Flink); the partitioners drop it."""

    def join(self, other: KeyedStream, *, how: str = "inner") -> JoinedStreams:
        """Join with ``other`` per key and event-time window: ``a.join(b,
        how="inner"|"left"|"full").window(Tumbling(seconds=10)).apply(fn)``. Both
        streams are written by key to the join's topic, so they need not be
        partitioned alike (README: "Window join")."""
        _check_other(self, other, "join")
        if how not in WINDOW_JOIN_HOWS:
            raise JobDefinitionError(f"join(how={how!r}): expected one of {WINDOW_JOIN_HOWS}")
        return JoinedStreams(self, other, how)

    def interval_join(
        self,
        other: KeyedStream,
        *,
        lower: float,
        upper: float,
        fn: Callable[[Any, Any], Any] | None = None,
        partitions: int | None = None,
        name: str | None = None,
    ) -> KeyedStream:
        """Join each record (event time ``t``) with ``other``'s records of its key whose
        event times lie in ``[t + lower, t + upper]`` (seconds, either sign): emits
        ``fn(left, right)`` (default ``{"key", "left", "right"}``) as soon as both are
        there, at the later of their times. Records behind the watermark are late
        (counted, not joined); state is dropped once the watermark has passed what a
        record can still match (README: "Interval join")."""
        _check_other(self, other, "interval_join")
        lo, hi = _seconds(lower, "lower"), _seconds(upper, "upper")
        if lo > hi:
            raise JobDefinitionError(
                f"interval_join(lower={lower!r}, upper={upper!r}): lower must not exceed upper"
            )
        if fn is not None:
            _check_callable(fn, "interval_join")
        _check_partitions(partitions, "interval_join")
        ops = (self._op, other._op)
        op = self._job._add(
            IntervalJoin, name, ops, sides=tuple(o.name for o in ops), partitions=partitions,
            lower_ms=lo, upper_ms=hi, fn=fn,
        )  # fmt: skip
        return KeyedStream(self._job, op)

    def connect(self, broadcast: BroadcastStream) -> ConnectedStreams:
        """Connect with a broadcast stream (``rules.broadcast_state()``), then
        ``.process(MyKeyedBroadcastProcessFunction())``."""
        if not isinstance(broadcast, BroadcastStream):
            raise JobDefinitionError(
                f"connect({broadcast!r}): expected a broadcast stream (stream.broadcast_state())"
            )
        if broadcast._job is not self._job:
            raise JobDefinitionError(
                f"connect(): the broadcast stream belongs to job {broadcast._job.name!r}"
            )
        if broadcast._op is self._op:
            raise JobDefinitionError("connect(): a stream cannot be connected with itself")
        return ConnectedStreams(self, broadcast)

    def join_table(
        self,
        table: Table,
        fn: Callable[[Any, Any], Any] | None = None,
        *,
        how: str = "inner",
        partitions: int | None = None,
        name: str | None = None,
    ) -> KeyedStream:
        """Join each record with ``table``'s value for its key *as of the record's
        event time*: the table update with the latest event time at or before it
        (README: "Stream-table join"). Emits ``fn(value, table_value)`` — by default
        ``{"key": key, "value": value, "table": table_value}`` — at the record's event
        time, once the watermark has passed it. ``how="inner"`` drops records whose key
        has no value then; ``"left"`` emits them with ``None``.

        Both inputs are written by key to the join's topic
        ``<group>.<name>.repartition`` (``partitions`` partitions, default the stream
        source's), so they need not be partitioned alike.
        """
        if not isinstance(table, Table):
            raise JobDefinitionError(
                f"join_table({table!r}): expected a table of this job (job.table(topic))"
            )
        if table._job is not self._job:
            raise JobDefinitionError(
                f"join_table(): table {table.topic!r} belongs to job {table._job.name!r}"
            )
        if how not in JOIN_HOWS:
            raise JobDefinitionError(f"join_table(how={how!r}): expected one of {JOIN_HOWS}")
        if fn is not None:
            _check_callable(fn, "join_table")
        _check_partitions(partitions, "join_table")
        ops = (self._op, table._op)
        op = self._job._add(
            JoinTable,
            name,
            ops,
            sides=tuple(o.name for o in ops),
            partitions=partitions,
            how=how,
            fn=fn,
            table=table.topic,
        )
        return KeyedStream(self._job, op)

    def reduce(self, fn: Callable[[Any, Any], Any], *, name: str | None = None) -> KeyedStream:
        """Running reduce per key: ``fn(accumulated, value)``; the first value starts it.

        Emits ``{"key": key, **result}`` (or ``{"key": key, "value": result}`` when
        the result is not a dict) on every update. State is checkpointed.
        """
        return KeyedStream(self._job, self._then(Reduce, name, fn=_check_callable(fn, "reduce")))

    def aggregate(self, *, name: str | None = None, **fields: Any) -> KeyedStream:
        """Running aggregates per key, e.g. ``aggregate(count="count", avg=("mean", "v"))``.

        Built-ins: ``"count"``, ``("sum"|"min"|"max"|"mean", field_or_fn)``; or an
        `operators.AggregateFunction`. Emits ``{"key": key, <fields>}`` on every update.
        """
        compile_aggregates(fields)  # validate now
        op = self._then(Aggregate, name, fields=MappingProxyType(fields))
        return KeyedStream(self._job, op)

    def process(self, fn: KeyedProcessFunction, *, name: str | None = None) -> KeyedStream:
        """A keyed process function: per-key state handles and event/processing-time timers.

        ``fn`` is an `operators.KeyedProcessFunction`; what it emits stays keyed.
        """
        if not isinstance(fn, KeyedProcessFunction):
            raise JobDefinitionError(
                f"process({fn!r}): expected an instance of operators.KeyedProcessFunction"
            )
        return KeyedStream(self._job, self._then(Process, name, fn=fn))

    def window(
        self,
        spec: WindowSpec,
        *,
        allowed_lateness: float = 0.0,
        late_topic: str | None = None,
    ) -> WindowedStream:
        """Event-time windows: `operators.Tumbling`, `Sliding` or `Session`.

        A window fires when the watermark passes its end. ``allowed_lateness``
        (seconds) keeps it open for late records, each re-emitting the result;
        records later than that are counted and, with ``late_topic``, written
        there with the reason.
        """
        if not isinstance(spec, WindowSpec):
            raise JobDefinitionError(
                f"window({spec!r}): expected Tumbling(...), Sliding(...) or Session(...)"
            )
        if (
            isinstance(allowed_lateness, bool)
            or not isinstance(allowed_lateness, int | float)
            or allowed_lateness < 0
        ):
            raise JobDefinitionError(
                f"allowed_lateness={allowed_lateness!r}: expected seconds >= 0"
            )
        if late_topic is not None:
            _check_name(late_topic, "late_topic")
        return WindowedStream(self, spec, round(allowed_lateness * 1000), late_topic)


class WindowedStream:
    """A keyed stream cut into windows; finish it with an aggregation."""

    def __init__(
        self, keyed: KeyedStream, spec: WindowSpec, lateness_ms: int, late_topic: str | None
    ) -> None:
        self._keyed = keyed
        self._spec = spec
        self._lateness_ms = lateness_ms
        self._late_topic = late_topic

    def _then(
        self,
        function: WindowFunctionKind,
        name: str | None,
        fn: Callable[..., Any] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> KeyedStream:
        keyed = self._keyed
        op = keyed._then(
            Window,
            name,
            spec=self._spec,
            function=function,
            fn=fn,
            fields=None if fields is None else MappingProxyType(fields),
            lateness_ms=self._lateness_ms,
            late_topic=self._late_topic,
        )
        return KeyedStream(keyed._job, op)

    def aggregate(self, *, name: str | None = None, **fields: Any) -> KeyedStream:
        """Per key and window: ``{"key", "window_start", "window_end", <fields>}``."""
        compile_aggregates(fields)
        return self._then(WindowFunctionKind.AGGREGATE, name, fields=fields)

    def reduce(self, fn: Callable[[Any, Any], Any], *, name: str | None = None) -> KeyedStream:
        """Per key and window, ``fn(accumulated, value)`` over the window's records."""
        return self._then(WindowFunctionKind.REDUCE, name, fn=_check_callable(fn, "reduce"))

    def process(
        self, fn: Callable[[Any, tuple[int, int], list], Any], *, name: str | None = None
    ) -> KeyedStream:
        """A full-window function: ``fn(key, (start, end), elements)`` sees all elements."""
        return self._then(WindowFunctionKind.PROCESS, name, fn=_check_callable(fn, "process"))
