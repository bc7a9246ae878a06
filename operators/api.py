"""The job API: `Job`, `Stream` and `KeyedStream`.

This is all a job file sees. Calls only record the dataflow (the logical plan
in `operators.plan`); nothing runs until ``weir run`` hands the job to a worker.
Arguments are validated here, at definition time, so a bad job fails before it
touches Kafka, with a message naming the bad value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from operators.aggregates import compile_aggregates
from operators.exceptions import JobDefinitionError
from operators.formats import check_format
from operators.plan import (
    AGGREGATE,
    BROADCAST,
    FILTER,
    FLAT_MAP,
    FORWARD,
    KEY_BY,
    MAP,
    PARTITION,
    PROCESS,
    REBALANCE,
    REDUCE,
    RESCALE,
    SHUFFLE,
    SINK,
    SOURCE,
    STATEFUL,
    WINDOW,
    Node,
    walk,
)
from operators.process import KeyedProcessFunction
from operators.windows import WindowSpec
from state.keygroups import DEFAULT_MAX_KEY_GROUPS

ERROR_POLICIES = ("dlq", "skip", "fail")
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise JobDefinitionError(
            f"{what} {name!r} is not valid; expected a non-empty string of letters, digits,"
            " '.', '_' or '-' (it is used in Kafka topic names)"
        )
    return name


def _check_callable(fn: Any, method: str) -> Callable[..., Any]:
    if not callable(fn):
        raise JobDefinitionError(f"{method}() needs a function, got {fn!r}")
    return fn


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
        self.on_error = on_error
        self.max_key_groups = max_key_groups
        self.sources: list[Node] = []
        self._next_id = 0
        self._names: set[str] = set()
        self._bound: str | None = None

    def source(
        self,
        topic: str,
        *,
        value: str = "json",
        timestamp: Callable[[Any], int] | None = None,
        max_out_of_orderness: float = 0.0,
        idle_timeout: float | None = None,
        name: str | None = None,
    ) -> Stream:
        """Read ``topic``. ``value`` is ``"json"`` or ``"bytes"``.

        ``timestamp`` extracts a record's event time (epoch ms) from its
        decoded value; by default the Kafka record timestamp is used.
        ``max_out_of_orderness`` (seconds) and ``idle_timeout`` (seconds)
        describe the source's disorder and idleness for watermarks.
        """
        _check_name(topic, "source topic")
        check_format(value, f"source({topic!r})")
        if timestamp is not None:
            _check_callable(timestamp, "source(timestamp=…)")
        if not isinstance(max_out_of_orderness, int | float) or max_out_of_orderness < 0:
            raise JobDefinitionError(
                f"max_out_of_orderness={max_out_of_orderness!r}; expected seconds >= 0"
            )
        if idle_timeout is not None and (
            not isinstance(idle_timeout, int | float) or idle_timeout <= 0
        ):
            raise JobDefinitionError(f"idle_timeout={idle_timeout!r}; expected seconds > 0")
        node = self._node(
            SOURCE,
            name or f"source-{topic}",
            None,
            topic=topic,
            value=value,
            timestamp=timestamp,
            max_out_of_orderness=float(max_out_of_orderness),
            idle_timeout=idle_timeout,
        )
        self.sources.append(node)
        return Stream(self, node)

    # -- plan ------------------------------------------------------------
    def nodes(self) -> list[Node]:
        """Every node of the plan, sources first, depth first."""
        return [n for src in self.sources for n in walk(src)]

    def source_topics(self) -> list[str]:
        """Topics the job reads, its repartition topics included."""
        return sorted({n.options["topic"] for n in self.sources})

    def user_source_topics(self) -> list[str]:
        """Topics the job's author named (they must exist before it runs)."""
        return sorted({n.options["topic"] for n in self.sources if not n.options.get("internal")})

    def repartition_topics(self) -> list[str]:
        """The repartition topics the job writes and reads (after `bind`)."""
        return sorted({n.options["topic"] for n in self.repartitions()})

    def repartitions(self) -> list[Node]:
        """The internal sources reading repartition topics (after `bind`)."""
        return [n for n in self.sources if n.options.get("internal")]

    def bind(self, group: str) -> None:
        """Fix the group-dependent plan: a ``key_by(fn)`` that feeds keyed state
        writes to ``<group>.<key_by name>.repartition``, and what followed it reads
        that topic as a new source. Call once, before running."""
        if self._bound is not None:
            if self._bound != group:
                raise JobDefinitionError(f"job {self.name!r} is already bound to {self._bound!r}")
            return
        self._bound = group
        for src in list(self.sources):
            self._split(src, src, group)

    def _split(self, node: Node, source: Node, group: str) -> None:
        for child in node.children:
            if child.kind == KEY_BY and child.fn is not None and _feeds_state(child):
                topic = f"{group}.{child.name}.repartition"
                self._next_id += 1
                internal = Node(
                    self._next_id,
                    SOURCE,
                    f"source-{topic}",
                    None,
                    {
                        **source.options,
                        "topic": topic,
                        "value": "repartition",
                        "timestamp": None,  # the record timestamp carries the event time
                        "internal": True,
                        "partitions": child.options["partitions"],
                        "upstream": source.options["topic"],
                    },
                    child.children,
                )
                child.children = []
                child.options["repartition"] = topic
                self.sources.append(internal)
                self._split(internal, internal, group)
            else:
                self._split(child, source, group)

    def sink_topics(self) -> list[str]:
        topics = {n.options["topic"] for n in self.nodes() if n.kind == SINK}
        topics |= {
            n.options["late_topic"]
            for n in self.nodes()
            if n.kind == WINDOW and n.options["late_topic"] is not None
        }
        return sorted(topics)

    def event_time_sources(self) -> list[Node]:
        """Sources feeding windows or process functions: their watermarks drive timers."""
        return [s for s in self.sources if any(n.kind in (WINDOW, PROCESS) for n in walk(s))]

    def has_timers(self) -> bool:
        return bool(self.event_time_sources())

    def validate(self) -> None:
        """Check the job is runnable as a whole (called by the worker before it starts)."""
        if not self.sources:
            raise JobDefinitionError(f"job {self.name!r} has no source; call job.source(topic)")
        if not any(n.kind == SINK for n in self.nodes()):
            raise JobDefinitionError(
                f"job {self.name!r} has no sink; end a stream with .sink(topic)"
            )
        for src in self.sources:
            self._check_stateful(src, exchanged=None)

    def _check_stateful(self, node: Node, exchanged: Node | None) -> None:
        """Keyed state needs every key's records in one input partition: no exchange before it."""
        if node.kind in STATEFUL and exchanged is not None:
            raise JobDefinitionError(
                f"{node.name} ({node.kind}) comes after {exchanged.name}, which moves records"
                " between slots; keyed state needs records partitioned by its key: put a"
                " key_by(...) right before it"
            )
        if node.kind == KEY_BY and node.fn is not None and _feeds_state(node):
            exchanged = None  # a repartition topic re-partitions by the key
        elif node.exchanges:
            exchanged = node
        for child in node.children:
            self._check_stateful(child, exchanged)

    def stateful(self) -> list[tuple[Node, str]]:
        """Every stateful operator with the source topic whose partitions its state follows."""
        found = []
        for src in self.sources:
            found.extend((n, src.options["topic"]) for n in walk(src) if n.kind in STATEFUL)
        return found

    def describe(self) -> str:
        """A readable plan: one line per operator, indented by depth."""
        lines = [f"job {self.name}"]

        def add(node: Node, depth: int) -> None:
            lines.append("  " * depth + node.describe())
            for child in node.children:
                add(child, depth + 1)

        for src in self.sources:
            add(src, 1)
        return "\n".join(lines)

    def _node(self, kind: str, name: str, fn: Callable[..., Any] | None, **options: Any) -> Node:
        _check_name(name, "operator name")
        if name in self._names:
            raise JobDefinitionError(
                f"operator name {name!r} is used twice in job {self.name!r}; names must be unique"
            )
        self._names.add(name)
        self._next_id += 1
        return Node(self._next_id, kind, name, fn, options)


def _feeds_state(node: Node) -> bool:
    """Does keyed state follow ``node`` before any other exchange?"""
    for child in node.children:
        if child.kind in STATEFUL:
            return True
        if not child.exchanges and _feeds_state(child):
            return True
    return False


class Stream:
    """A stream of records; each method adds an operator and returns the new stream."""

    def __init__(self, job: Job, node: Node) -> None:
        self._job = job
        self._node = node

    def _then(
        self, kind: str, fn: Callable[..., Any] | None, name: str | None, **options: Any
    ) -> Node:
        node = self._job._node(kind, name or f"{kind}-{self._job._next_id + 1}", fn, **options)
        self._node.children.append(node)
        return node

    def _same_kind(self, node: Node) -> Stream:
        return type(self)(self._job, node)

    def map(self, fn: Callable[[Any], Any], *, name: str | None = None) -> Stream:
        """One output per record: ``fn(value)``."""
        return self._same_kind(self._then(MAP, _check_callable(fn, "map"), name))

    def filter(self, fn: Callable[[Any], bool], *, name: str | None = None) -> Stream:
        """Keep the records for which ``fn(value)`` is true."""
        return self._same_kind(self._then(FILTER, _check_callable(fn, "filter"), name))

    def flat_map(self, fn: Callable[[Any], Iterable[Any]], *, name: str | None = None) -> Stream:
        """Zero or more outputs per record: the items of ``fn(value)``."""
        return self._same_kind(self._then(FLAT_MAP, _check_callable(fn, "flat_map"), name))

    def key_by(
        self,
        fn: Callable[[Any], Any] | None = None,
        *,
        partitions: int | None = None,
        name: str | None = None,
    ) -> KeyedStream:
        """Partition by key. ``fn(value)`` extracts the key; without ``fn`` the
        Kafka record key is the key and records stay where they are (Kafka
        already partitions by it).

        With ``fn``, records move to the owner of their key: to another slot of
        this worker, or — when keyed state follows — through the repartition
        topic ``<group>.<name>.repartition`` (``partitions`` partitions, default
        the source's), so every key is owned by exactly one worker.
        """
        if fn is not None:
            _check_callable(fn, "key_by")
        if partitions is not None and (
            isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1
        ):
            raise JobDefinitionError(f"key_by(partitions={partitions!r}): expected an int >= 1")
        return KeyedStream(self._job, self._then(KEY_BY, fn, name, partitions=partitions))

    def _partition(self, partitioner: str, name: str | None) -> Stream:
        return Stream(self._job, self._then(PARTITION, None, name, partitioner=partitioner))

    def forward(self, *, name: str | None = None) -> Stream:
        """Keep records in the slot that produced them (the default)."""
        return self._partition(FORWARD, name)

    def rebalance(self, *, name: str | None = None) -> Stream:
        """Spread records round-robin over all slots (evens out skew)."""
        return self._partition(REBALANCE, name)

    def shuffle(self, *, name: str | None = None) -> Stream:
        """Send each record to a uniformly random slot."""
        return self._partition(SHUFFLE, name)

    def rescale(self, *, name: str | None = None) -> Stream:
        """Flink's rescale: round-robin to a local subset of downstream slots.

        Inside a worker every stage runs on all slots, so upstream and
        downstream parallelism are equal and rescale is one-to-one.
        """
        return self._partition(RESCALE, name)

    def broadcast(self, *, name: str | None = None) -> Stream:
        """Send every record to every slot."""
        return self._partition(BROADCAST, name)

    def sink(
        self,
        topic: str,
        *,
        value: str = "json",
        key: Callable[[Any], Any] | None = None,
        name: str | None = None,
    ) -> None:
        """Write to ``topic``. The record key is ``key(value)`` if given, else
        the stream's key (after ``key_by``), else the input record's key."""
        _check_name(topic, "sink topic")
        check_format(value, f"sink({topic!r})")
        if key is not None:
            _check_callable(key, "sink(key=…)")
        self._then(SINK, key, name or f"sink-{topic}", topic=topic, value=value)


class KeyedStream(Stream):
    """A stream partitioned by key: ``map``, ``filter`` and ``flat_map`` keep
    the partitioning (as in Flink); the partitioners drop it."""

    def reduce(self, fn: Callable[[Any, Any], Any], *, name: str | None = None) -> KeyedStream:
        """Running reduce per key: ``fn(accumulated, value)``; the first value starts it.

        Emits ``{"key": key, **result}`` (or ``{"key": key, "value": result}`` when
        the result is not a dict) on every update. State is checkpointed.
        """
        return KeyedStream(self._job, self._then(REDUCE, _check_callable(fn, "reduce"), name))

    def aggregate(self, *, name: str | None = None, **fields: Any) -> KeyedStream:
        """Running aggregates per key, e.g. ``aggregate(count="count", avg=("mean", "v"))``.

        Built-ins: ``"count"``, ``("sum"|"min"|"max"|"mean", field_or_fn)``; or an
        `operators.AggregateFunction`. Emits ``{"key": key, <fields>}`` on every update.
        """
        compile_aggregates(fields)  # validate now
        return KeyedStream(self._job, self._then(AGGREGATE, None, name, fields=fields))

    def process(self, fn: KeyedProcessFunction, *, name: str | None = None) -> KeyedStream:
        """A keyed process function: per-key state handles and event/processing-time timers.

        ``fn`` is an `operators.KeyedProcessFunction`; what it emits stays keyed.
        """
        if not isinstance(fn, KeyedProcessFunction):
            raise JobDefinitionError(
                f"process({fn!r}): expected an instance of operators.KeyedProcessFunction"
            )
        return KeyedStream(self._job, self._then(PROCESS, fn, name))

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
        self._options = {"spec": spec, "lateness_ms": lateness_ms, "late_topic": late_topic}

    def _then(self, function: str, fn: Any, name: str | None, **options: Any) -> KeyedStream:
        keyed = self._keyed
        node = keyed._then(WINDOW, fn, name, function=function, **self._options, **options)
        return KeyedStream(keyed._job, node)

    def aggregate(self, *, name: str | None = None, **fields: Any) -> KeyedStream:
        """Per key and window: ``{"key", "window_start", "window_end", <fields>}``."""
        compile_aggregates(fields)
        return self._then("aggregate", None, name, fields=fields)

    def reduce(self, fn: Callable[[Any, Any], Any], *, name: str | None = None) -> KeyedStream:
        """Per key and window, ``fn(accumulated, value)`` over the window's records."""
        return self._then("reduce", _check_callable(fn, "reduce"), name)

    def process(
        self, fn: Callable[[Any, tuple[int, int], list], Any], *, name: str | None = None
    ) -> KeyedStream:
        """A full-window function: ``fn(key, (start, end), elements)`` sees all elements."""
        return self._then("process", _check_callable(fn, "process"), name)
