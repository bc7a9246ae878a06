"""The physical plan: a job bound to a consumer group, as the runtime runs it.

`compile_plan(job, group)` reads the job's logical plan (`weir.operators.plan.Dataflow`)
and builds a new, immutable graph of `PlanNode`s; the job itself is left as it
was, so one job compiles for any number of groups. The steps:

1. Validate the job as a whole (`Job.validate`), so nothing unrunnable compiles.
2. Copy each source's tree, resolving every ``key_by``:
   without a function it becomes `RecordKey` (Kafka already partitions by the
   record key); with one, when keyed state follows before any other exchange,
   it becomes `Repartition`, which writes to ``<group>.<key_by name>.repartition``
   and ends its branch, and what followed it hangs under a new
   `RepartitionSource` reading that topic (so every key is owned by exactly one
   worker); otherwise it becomes `HashExchange`, an exchange between the slots
   of one worker. The job's sources come first in the plan, then the
   repartition sources in the order a depth-first walk meets them. A `Union`
   is compiled once, where the walk first meets it; its node is a child of each
   of its inputs (the plan is a DAG), and a repartition after it is written by
   the trees of all the sources that reach it. An operator with several inputs (`MultiInputOp`)
   hangs under a `MergedSource` of its own topic ``<group>.<name>.repartition``;
   each of its inputs ends in a `SideRepartition` writing to that topic — in
   place of a ``key_by(fn)`` that feeds it directly, else after the input's last
   operator (keyed by the stream's key; a table's by its record key; a
   ``key_by(fn)`` feeding several of them sets the key in place, `Rekey`). Each
   side keeps the watermark settings of the sources upstream of it.
3. List every stateful operator with the topic whose partitions its state
   follows (the source of its tree), its state names and its changelog
   ``<group>.<operator>.changelog``.

Event time flows through repartition topics (`weir.service.repartition_watermarks`):
a repartition topic whose tree has timers (windows, process functions, operators
with several inputs), or writes into such a topic further down, is a *watermark
channel*: the workers reading its upstream topic announce their partitions'
watermarks into it (after a union, each topic reaching it is the upstream of a
channel of its own). The plan names these channels and every topic whose watermark
someone needs.

Topic names are a contract (they outlive workers and releases): changelogs
``<group>.<operator>.changelog``, repartition topics
``<group>.<key_by name>.repartition``, dead letters ``<group>.dlq``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from weir.operators.api import Job
from weir.operators.formats import Serde
from weir.operators.keyed import states_of
from weir.operators.plan import (
    ErrorPolicy,
    HashExchange,
    KeyBy,
    MergedSource,
    MultiInputOp,
    Op,
    Process,
    RecordKey,
    Rekey,
    Repartition,
    RepartitionSource,
    SideRepartition,
    Sink,
    Source,
    StatefulOp,
    Union,
    Window,
)
from weir.operators.sides import side_clocks_state

AnySource = Source | RepartitionSource


class Upstream(Protocol):
    """What heads the tree an operator is in: the topic a repartition topic after it
    takes its default partition count from."""

    topic: str


@dataclass(frozen=True)
class MergedUpstream:
    """The sources reaching a union, as one `Upstream`: the topic of the input the
    walk met first (for a repartition topic's default partition count), the largest
    disorder, the longest idle timeout (None, never idle, if any source never is)."""

    topic: str
    max_out_of_orderness: float
    idle_timeout: float | None

    @classmethod
    def of(cls, topic: str, sources: list[Source]) -> MergedUpstream:
        idles = [s.idle_timeout for s in sources]
        return cls(
            topic,
            max(s.max_out_of_orderness for s in sources),
            None if None in idles else max(idles),
        )


@dataclass(frozen=True, eq=False)
class PlanNode:
    """One operator of the physical plan and the operators its output feeds."""

    op: Op
    children: tuple[PlanNode, ...] = ()

    def walk(self, seen: set[int] | None = None) -> Iterator[PlanNode]:
        """This node and everything downstream of it, depth first, each once (a union
        is reachable from each of its inputs; ``seen``: op ids already visited)."""
        seen = set() if seen is None else seen
        if self.op.id in seen:
            return
        seen.add(self.op.id)
        yield self
        for child in self.children:
            yield from child.walk(seen)


@dataclass(frozen=True, eq=False)
class KeyedState:
    """A stateful operator's keyed state: what it is partitioned by and where it is kept."""

    op: StatefulOp
    input_topic: str  # the topic whose partitions the state follows (its tree's source)
    states: tuple[str, ...]  # state (column family) names, each logged to ``changelog``
    changelog: str

    @property
    def name(self) -> str:
        return self.op.name


@dataclass(frozen=True)
class WatermarkChannel:
    """A repartition topic that carries the watermarks of its upstream topic's
    partitions to the timers behind it. ``timed``: timer operators lie between the
    upstream source and the ``key_by``, so the records written carry times those
    timers chose (window ends), and what is announced is held to their watermark."""

    upstream: str
    topic: str
    timed: bool


def _timed(node: PlanNode) -> bool:
    return isinstance(node.op, Window | Process | MultiInputOp)


def _channels(roots: tuple[PlanNode, ...]) -> tuple[WatermarkChannel, ...]:
    """Every repartition into a topic whose watermark is needed, found by walking the
    roots in reverse: a repartition source comes after the tree that writes it."""
    needed = {root.op.topic for root in roots if any(map(_timed, root.walk()))}
    found: list[WatermarkChannel] = []
    for root in reversed(roots):
        for node, timed in _repartitions(root, False):
            if node.op.topic in needed:
                found.append(WatermarkChannel(root.op.topic, node.op.topic, timed))
                needed.add(root.op.topic)
    return tuple(reversed(found))


def _repartitions(node: PlanNode, timed: bool) -> Iterator[tuple[PlanNode, bool]]:
    """The `Repartition` nodes under ``node``, each with whether a timer operator
    lies on the way to it."""
    timed = timed or _timed(node)
    if isinstance(node.op, Repartition):
        yield node, timed
    for child in node.children:
        yield from _repartitions(child, timed)


def event_time_topics(roots: tuple[PlanNode, ...]) -> frozenset[str]:
    """The topics whose watermark is needed: those read by a tree with timers, and
    the upstream topics of every watermark channel."""
    timed = {root.op.topic for root in roots if any(map(_timed, root.walk()))}
    return frozenset(timed | {channel.upstream for channel in _channels(roots)})


@dataclass(frozen=True, eq=False)
class PhysicalPlan:
    """What the runtime runs: one tree per source (``roots``), the keyed state, and the
    topics the job reads and writes, all for one consumer group."""

    job: str
    group: str
    on_error: ErrorPolicy
    max_key_groups: int
    roots: tuple[PlanNode, ...]  # the job's sources first, then the repartition sources
    stateful: tuple[KeyedState, ...]

    @property
    def sources(self) -> tuple[AnySource, ...]:
        return tuple(root.op for root in self.roots)

    def nodes(self) -> Iterator[PlanNode]:
        """Every node of the plan once, root by root, depth first."""
        seen: set[int] = set()
        for root in self.roots:
            yield from root.walk(seen)

    @property
    def repartitions(self) -> tuple[RepartitionSource, ...]:
        """The sources reading repartition topics."""
        return tuple(s for s in self.sources if isinstance(s, RepartitionSource))

    @property
    def source_topics(self) -> list[str]:
        """Topics the job reads, its repartition topics included."""
        return sorted({s.topic for s in self.sources})

    @property
    def user_source_topics(self) -> list[str]:
        """Topics the job's author named (they must exist before it runs)."""
        return sorted({s.topic for s in self.sources if isinstance(s, Source)})

    @property
    def repartition_topics(self) -> list[str]:
        """The repartition topics the job writes and reads (Weir creates them)."""
        return sorted({s.topic for s in self.repartitions})

    @property
    def sink_topics(self) -> list[str]:
        """Topics the job writes to: its sinks and its windows' late topics."""
        topics = set()
        for node in self.nodes():
            if isinstance(node.op, Sink):
                topics.add(node.op.topic)
            elif isinstance(node.op, Window) and node.op.late_topic is not None:
                topics.add(node.op.late_topic)
        return sorted(topics)

    @property
    def formats(self) -> list[tuple[str, Serde]]:
        """Every format the job's sources and sinks use, each with where it is used
        (``source('t') value``), for checks a worker makes before it starts."""
        out = []
        for root in self.roots:
            for node in root.walk():
                op = node.op
                if isinstance(op, Source | Sink):
                    where = f"{op.kind}({op.topic!r})"
                    out.append((f"{where} value", op.value))
                    if op.key_format is not None:
                        out.append((f"{where} key_format", op.key_format))
        return out

    @property
    def event_time_sources(self) -> tuple[AnySource, ...]:
        """Sources whose watermark is needed: they feed windows, process functions or
        operators with several inputs, directly or through watermark channels."""
        topics = event_time_topics(self.roots)
        return tuple(root.op for root in self.roots if root.op.topic in topics)

    @property
    def watermark_channels(self) -> tuple[WatermarkChannel, ...]:
        """The repartition topics that carry watermarks, with their upstream topics."""
        return _channels(self.roots)

    @property
    def exchanges(self) -> bool:
        """Do records move between slots inside a worker (a hash exchange, or a
        rebalance/shuffle/rescale/broadcast partitioner)?"""
        return any(node.op.exchanges for node in self.nodes())

    @property
    def everywhere_topics(self) -> frozenset[str]:
        """Topics of operators with a broadcast side: their keyless records are broadcast
        ones, for every slot sharing a partition (`service.router`)."""
        return frozenset(
            root.op.topic
            for root in self.roots
            if isinstance(root.op, MergedSource)
            and any(isinstance(n.op, MultiInputOp) and n.op.broadcast_sides for n in root.walk())
        )

    @property
    def dlq_topic(self) -> str:
        """Where failed records go under ``on_error="dlq"``."""
        return f"{self.group}.dlq"

    def describe(self) -> str:
        """A readable plan: one line per operator, indented by depth. An operator with
        several inputs (a union) is described under the first input the walk meets;
        under each other one a line points to it."""
        lines = [f"job {self.job}"]
        seen: set[int] = set()
        for root in self.roots:
            self._describe(root, 1, lines, seen)
        return "\n".join(lines)

    def _describe(self, node: PlanNode, depth: int, lines: list[str], seen: set[int]) -> None:
        if node.op.id in seen:
            lines.append("  " * depth + f"-> {node.op.name} (an input of it; described above)")
            return
        seen.add(node.op.id)
        lines.append("  " * depth + node.op.describe())
        for child in node.children:
            self._describe(child, depth + 1, lines, seen)


def compile_plan(job: Job, group: str) -> PhysicalPlan:
    """Bind ``job`` to consumer group ``group``; the job is not changed (steps above)."""
    # Step 1
    job.validate()
    flow = job.dataflow
    new_ids = itertools.count(1 + max(op.id for op in flow.ops()))
    repartitioned: list[PlanNode] = []
    origins: dict[int, list[Source]] = {}  # op id -> the job's sources that reach it
    for src in flow.sources:
        for op in flow.walk(src):
            origins.setdefault(op.id, []).append(src)
    compiled: dict[int, PlanNode] = {}  # unions, compiled once
    by_name = {op.name: op for op in flow.ops()}
    readers: dict[int, MergedSource] = {}  # multi-input op id -> the source of its topic

    # Step 2
    def compile_children(op: Op, source: Upstream) -> tuple[PlanNode, ...]:
        return tuple(
            side_edge(op, child, None) if isinstance(child, MultiInputOp)
            else compile_op(child, source)
            for child in flow.children(op)
        )  # fmt: skip

    def upstream_of(op: Op) -> MergedUpstream:
        """The watermark settings of the job's sources that reach ``op``."""
        return MergedUpstream.of(origins[op.id][0].topic, origins[op.id])

    def side_edge(
        parent: Op, target: MultiInputOp, fn: Any, keyed_by: KeyBy | None = None
    ) -> PlanNode:
        """``parent``'s records into ``target``'s topic, keyed by ``fn`` (None: their
        key), as the ``keyed_by`` they replace or as a new operator."""
        reader = merged(target)
        side = target.sides.index(parent.name)
        ident, name = (
            (keyed_by.id, keyed_by.name)
            if keyed_by is not None
            else (next(new_ids), f"{target.name}.side-{side}")
        )
        edge = SideRepartition(
            id=ident,
            name=name,
            fn=fn,
            topic=reader.topic,
            side=side,
            target=target.name,
            with_meta=keyed_by is not None and keyed_by.with_meta,
            broadcast=side in target.broadcast_sides,
        )
        return PlanNode(edge)

    def merged(target: MultiInputOp) -> MergedSource:
        """The source of ``target``'s topic, with ``target`` under it (built once)."""
        if target.id in readers:
            return readers[target.id]
        topic = f"{group}.{target.name}.repartition"
        sides = [upstream_of(by_name[name]) for name in target.sides]
        every = list(
            dict.fromkeys(src for name in target.sides for src in origins[by_name[name].id])
        )
        whole = MergedUpstream.of(sides[0].topic, every)
        reader = readers[target.id] = MergedSource(
            id=next(new_ids),
            name=f"source-{topic}",
            topic=topic,
            upstream=whole.topic,
            partitions=target.partitions,
            max_out_of_orderness=0.0,  # each side's is applied per side
            idle_timeout=whole.idle_timeout,
            clocks=tuple((side.max_out_of_orderness, side.idle_timeout) for side in sides),
            clock_state=side_clocks_state(target.name),
        )
        place = len(repartitioned)
        repartitioned.append(PlanNode(reader))  # its place, before the ones found below it
        node = PlanNode(target, compile_children(target, whole))
        repartitioned[place] = PlanNode(reader, (node,))
        return reader

    def compile_op(op: Op, source: Upstream) -> PlanNode:
        """``op``'s node; ``source`` heads the tree it is in."""
        if isinstance(op, Union):
            if op.id not in compiled:
                merged = MergedUpstream.of(source.topic, origins[op.id])
                compiled[op.id] = PlanNode(op, compile_children(op, merged))
            return compiled[op.id]
        if not isinstance(op, KeyBy):
            return PlanNode(op, compile_children(op, source))
        if op.fn is None:
            return PlanNode(
                RecordKey(id=op.id, name=op.name, auto_named=op.auto_named),
                compile_children(op, source),
            )
        children = flow.children(op)
        if children and all(isinstance(c, MultiInputOp) for c in children):
            if len(children) == 1:  # key_by(fn) right before a join: its side writes
                return side_edge(op, children[0], op.fn, keyed_by=op)
            rekey = Rekey(
                id=op.id, name=op.name, auto_named=op.auto_named, fn=op.fn, with_meta=op.with_meta
            )
            return PlanNode(rekey, compile_children(op, source))
        if not flow.feeds_state(op):
            keyed = HashExchange(
                id=op.id, name=op.name, auto_named=op.auto_named, fn=op.fn, with_meta=op.with_meta
            )
            return PlanNode(keyed, compile_children(op, source))
        topic = f"{group}.{op.name}.repartition"
        reader = RepartitionSource(
            id=next(new_ids),
            name=f"source-{topic}",
            topic=topic,
            upstream=source.topic,
            partitions=op.partitions,
        )
        place = len(repartitioned)
        repartitioned.append(PlanNode(reader))  # its place, before the ones found below it
        repartitioned[place] = PlanNode(reader, compile_children(op, reader))
        repartition = Repartition(
            id=op.id,
            name=op.name,
            auto_named=op.auto_named,
            fn=op.fn,
            topic=topic,
            with_meta=op.with_meta,
        )
        return PlanNode(repartition)

    user = [compile_op(source, source) for source in flow.sources]
    roots = (*user, *repartitioned)

    # Step 3
    seen: set[int] = set()
    stateful = tuple(
        KeyedState(
            op=node.op,
            input_topic=root.op.topic,
            states=states_of(node.op),
            changelog=f"{group}.{node.op.name}.changelog",
        )
        for root in roots
        for node in root.walk(seen)
        if isinstance(node.op, StatefulOp)
    )
    return PhysicalPlan(job.name, group, job.on_error, job.max_key_groups, roots, stateful)
