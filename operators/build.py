"""Instantiating a job's plan inside one slot.

`build_chain` creates one operator instance per plan node and links them:
everything between two exchanges is chained (a direct call per batch), an
exchange's downstream becomes an *input* of the slot that other slots send to.
"""

from __future__ import annotations

from operators.chain import (
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
)
from operators.keyed import AggregateOp, KeyedOp, ReduceOp
from operators.plan import (
    AGGREGATE,
    FILTER,
    FLAT_MAP,
    KEY_BY,
    MAP,
    PARTITION,
    PROCESS,
    REDUCE,
    SINK,
    SOURCE,
    WINDOW,
    Node,
)
from operators.process import ProcessOp
from operators.timers import TimerOperator
from operators.windowed import WindowOp

_CHAINED: dict[str, type[Operator]] = {
    SOURCE: SourceOp,
    MAP: MapOp,
    FILTER: FilterOp,
    FLAT_MAP: FlatMapOp,
    SINK: SinkOp,
}
_KEYED: dict[str, type[KeyedOp]] = {REDUCE: ReduceOp, AGGREGATE: AggregateOp}


class SlotChain:
    """One slot's instances of a job's operators, and where inputs enter them.

    ``sources[topic]`` takes batches of raw Kafka messages read from ``topic``;
    ``inputs[target]`` takes batches arriving from exchanges; ``windows`` are the
    operators with timers (windows and process functions): the slot advances their
    watermark and clock and tells them which partitions it owns.
    """

    def __init__(
        self,
        sources: dict[str, Operator],
        inputs: dict[int, Operator],
        windows: list[TimerOperator],
    ) -> None:
        self.sources = sources
        self.inputs = inputs
        self.windows = windows


def build_chain(sources: list[Node], ctx: SlotContext, max_key_groups: int) -> SlotChain:
    """Instantiate the plan for one slot, chaining everything between exchanges."""
    inputs: dict[int, Operator] = {}
    windows: list[TimerOperator] = []  # operators with timers
    topic = ""

    def downstream(children: list[Node]) -> Operator | None:
        ops = [op for op in (build(child) for child in children) if op is not None]
        if not ops:
            return None
        return ops[0] if len(ops) == 1 else FanOut(ops)

    def build(node: Node) -> Operator | None:
        after = downstream(node.children)
        if node.exchanges:
            if after is None:
                return None
            inputs[node.id] = after
            cls = KeyByOp if node.kind == KEY_BY else ExchangeOp
            return cls(node, ctx, node.id, max_key_groups)
        if after is None and node.kind != SINK and "repartition" not in node.options:
            return None  # a branch without a sink does nothing
        if node.kind == PARTITION:  # forward, rescale: records stay in their slot
            return after
        if node.kind == KEY_BY and "repartition" in node.options:
            return RepartitionOp(node, ctx)  # ends this part of the plan: a topic follows
        if node.kind == KEY_BY:
            op: Operator = RecordKeyOp(node, ctx)
        elif node.kind in _KEYED:
            op = _KEYED[node.kind](node, ctx, max_key_groups)
        elif node.kind == WINDOW:
            op = WindowOp(node, ctx, max_key_groups, topic)
            windows.append(op)
        elif node.kind == PROCESS:
            op = ProcessOp(node, ctx, max_key_groups, topic)
            windows.append(op)
        elif node.kind == SOURCE and node.options["value"] == "repartition":
            op = RepartitionSourceOp(node, ctx)
        else:
            op = _CHAINED[node.kind](node, ctx)
        op.out = after
        return op

    heads: dict[str, list[Operator]] = {}
    for src in sources:
        topic = src.options["topic"]
        before = len(windows)
        op = build(src)
        if op is not None:
            op.track_time = len(windows) > before  # its watermark drives those windows
            heads.setdefault(topic, []).append(op)
    return SlotChain(
        {t: ops[0] if len(ops) == 1 else FanOut(ops) for t, ops in heads.items()},
        inputs,
        windows,
    )
