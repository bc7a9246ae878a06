"""Instantiating a job's plan inside one slot.

`build_chain` creates one operator instance per node of a physical plan
(`weir.operators.physical`) and links them: everything between two exchanges is
chained (a direct call per batch), an exchange's downstream becomes an *input*
of the slot that other slots send to. A union's downstream is built once and
becomes an input too, with one channel per union input (`SlotChain.fan_in`):
each input ends in a `UnionInputOp` that sends to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from weir.operators.broadcast import BroadcastProcessOp
from weir.operators.chain import (
    ExchangeOp,
    FanOut,
    FilterOp,
    FlatMapOp,
    KeyByOp,
    MapOp,
    Operator,
    RecordKeyOp,
    RepartitionOp,
    RepartitionSourceOp,
    SinkOp,
    SlotContext,
    SourceOp,
    UnionInputOp,
)
from weir.operators.fused import fuse
from weir.operators.interval_join import IntervalJoinOp
from weir.operators.keyed import AggregateOp, KeyedOp, ReduceOp
from weir.operators.physical import PlanNode, event_time_topics
from weir.operators.plan import (
    Aggregate,
    BroadcastProcess,
    Filter,
    FlatMap,
    HashExchange,
    IntervalJoin,
    JoinTable,
    Map,
    MergedSource,
    Op,
    Partition,
    Process,
    RecordKey,
    Reduce,
    Rekey,
    Repartition,
    RepartitionSource,
    SideRepartition,
    Sink,
    Source,
    Union,
    Window,
    WindowJoin,
)
from weir.operators.process import ProcessOp
from weir.operators.sides import MergedSourceOp, RekeyOp, SideRepartitionOp
from weir.operators.table_join import TableJoinOp
from weir.operators.timers import TimerOperator
from weir.operators.window_join import WindowJoinOp
from weir.operators.windowed import WindowOp

_CHAINED: dict[type[Op], Callable[..., Operator]] = {
    Source: SourceOp,
    RepartitionSource: RepartitionSourceOp,
    MergedSource: MergedSourceOp,
    Rekey: RekeyOp,
    Map: MapOp,
    Filter: FilterOp,
    FlatMap: FlatMapOp,
    RecordKey: RecordKeyOp,
    Sink: SinkOp,
}
_KEYED: dict[type[Op], type[KeyedOp]] = {Reduce: ReduceOp, Aggregate: AggregateOp}
_TIMED: dict[type[Op], type[TimerOperator]] = {
    Window: WindowOp,
    Process: ProcessOp,
    JoinTable: TableJoinOp,
    BroadcastProcess: BroadcastProcessOp,
    WindowJoin: WindowJoinOp,
    IntervalJoin: IntervalJoinOp,
}


class SlotChain:
    """One slot's instances of a job's operators, and where inputs enter them.

    ``sources[topic]`` takes batches of raw Kafka messages read from ``topic``;
    ``inputs[target]`` takes batches arriving from exchanges and unions;
    ``fan_in[target]`` is how many channels a union's target has (one per input;
    an exchange's target has one per slot); ``windows`` are the operators with
    timers (windows, process functions, joins): the slot advances their watermark
    and clock and tells them which partitions it owns; ``clocks`` are the sources of
    multi-input operators, whose watermarks move with time too (`MergedSourceOp.tick`).
    """

    def __init__(
        self,
        sources: dict[str, Operator],
        inputs: dict[int, Operator],
        windows: list[TimerOperator],
        fan_in: dict[int, int] | None = None,
        clocks: list[MergedSourceOp] | None = None,
    ) -> None:
        self.sources = sources
        self.inputs = inputs
        self.windows = windows
        self.fan_in = fan_in or {}
        self.clocks = clocks or []


def build_chain(roots: Sequence[PlanNode], ctx: SlotContext, max_key_groups: int) -> SlotChain:
    """Instantiate a physical plan's trees (`PhysicalPlan.roots`) for one slot,
    chaining everything between exchanges."""
    inputs: dict[int, Operator] = {}
    windows: list[TimerOperator] = []  # operators with timers
    fan_in: dict[int, int] = {}  # union target -> channels handed out so far
    topic = ""

    def union_input(node: PlanNode) -> Operator | None:
        """A sender to the union's target; the union's chain is built on the first call."""
        op = node.op
        if op.id not in fan_in:
            after = downstream(node.children)
            fan_in[op.id] = 0
            if after is None:
                return None
            inputs[op.id] = after
        if op.id not in inputs:
            return None  # a union without a sink after it does nothing
        channel = fan_in[op.id]
        fan_in[op.id] += 1
        return UnionInputOp(op, ctx, channel)

    def downstream(children: tuple[PlanNode, ...]) -> Operator | None:
        ops = [op for op in (build(child) for child in children) if op is not None]
        if not ops:
            return None
        return ops[0] if len(ops) == 1 else FanOut(ops)

    def build(node: PlanNode) -> Operator | None:
        op = node.op
        if isinstance(op, Union):
            return union_input(node)
        after = downstream(node.children)
        if op.exchanges:
            if after is None:
                return None
            inputs[op.id] = after
            cls = KeyByOp if isinstance(op, HashExchange) else ExchangeOp
            return cls(op, ctx, op.id, max_key_groups)
        if isinstance(op, Repartition):
            return RepartitionOp(op, ctx)  # ends this part of the plan: a topic follows
        if isinstance(op, SideRepartition):
            return SideRepartitionOp(op, ctx)  # likewise
        if after is None and not isinstance(op, Sink):
            return None  # a branch without a sink does nothing
        if isinstance(op, Partition):  # forward, rescale: records stay in their slot
            return after
        if type(op) in _KEYED:
            instance: Operator = _KEYED[type(op)](op, ctx, max_key_groups)
        elif type(op) in _TIMED:
            instance = _TIMED[type(op)](op, ctx, max_key_groups, topic)
            windows.append(instance)
        else:
            instance = _CHAINED[type(op)](op, ctx)
        instance.out = after
        return instance

    heads: dict[str, list[Operator]] = {}
    timed = event_time_topics(tuple(roots))
    for root in roots:
        topic = root.op.topic
        head = build(root)
        if head is not None:
            if not isinstance(head, RepartitionSourceOp):  # its time is its records'
                head.track_time = topic in timed  # its watermark drives timers, here or further
            # Kafka headers are kept only for a dataflow with a function that reads them.
            head.keep_headers = any(node.op.wants_meta for node in root.walk())
            heads.setdefault(topic, []).append(fuse(head))
    return SlotChain(
        {t: ops[0] if len(ops) == 1 else FanOut(ops) for t, ops in heads.items()},
        inputs,
        windows,
        {target: n for target, n in fan_in.items() if target in inputs},
        [
            head
            for heads_of in heads.values()
            for head in heads_of
            if isinstance(head, MergedSourceOp)
        ],
    )
