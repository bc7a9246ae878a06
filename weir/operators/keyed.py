"""Keyed stateful operators: running ``reduce`` and ``aggregate`` per key.

Each keeps one value per key in the slot's epoch buffer (`weir.state.epoch`), under
the storage key of (input partition, key) — so its writes go to the changelog
partition of the input partition they came from — and emits the key's new
result on every update: ``{"key": key, <fields>}``. A new value that cannot be
stored (`weir.state.epoch.EpochBuffer.put`) fails its record: it goes to the dead-letter
topic with reason ``state``, the key's value stays as it was, nothing is emitted.
"""

from __future__ import annotations

from typing import Any

from weir.operators.aggregates import AggregateFunction, compile_aggregates
from weir.operators.broadcast import broadcast_states
from weir.operators.chain import Barrier, Batch, Element, Operator, SlotContext
from weir.operators.interval_join import interval_join_states
from weir.operators.plan import (
    Aggregate,
    BroadcastProcess,
    IntervalJoin,
    JoinTable,
    MultiInputOp,
    Process,
    Reduce,
    StatefulOp,
    Window,
    WindowJoin,
)
from weir.operators.process import process_states
from weir.operators.sides import side_clocks_state
from weir.operators.skeys import StorageKeys
from weir.operators.table_join import table_join_states
from weir.operators.window_join import window_join_states
from weir.operators.windowed import window_states
from weir.state.epoch import MISSING
from weir.state.exceptions import UnstorableState


def state_name(op: Reduce | Aggregate) -> str:
    """The column family / changelog name of a keyed operator's state."""
    return f"{op.name}.acc"


def states_of(op: StatefulOp) -> tuple[str, ...]:
    """Every state name a stateful operator uses."""
    if isinstance(op, MultiInputOp):  # and its sides' clocks, kept by its reader
        return (*_multi_input_states(op), side_clocks_state(op.name))
    if isinstance(op, Window):
        return window_states(op)
    if isinstance(op, Process):
        return process_states(op)
    return (state_name(op),)


def _multi_input_states(op: MultiInputOp) -> tuple[str, ...]:
    if isinstance(op, JoinTable):
        return table_join_states(op)
    if isinstance(op, BroadcastProcess):
        return broadcast_states(op)
    if isinstance(op, WindowJoin):
        return window_join_states(op)
    if isinstance(op, IntervalJoin):
        return interval_join_states(op)
    raise TypeError(f"no state names for multi-input operator {op.name} ({op.kind})")


def _output(key: Any, value: Any) -> dict:
    if isinstance(key, bytes):
        key = key.decode(errors="replace")
    if isinstance(value, dict):
        return {"key": key, **value}
    return {"key": key, "value": value}


class KeyedOp(Operator):
    """Reads, updates and writes one key's value per record; storage keys come from
    the epoch's cache (`weir.operators.skeys`)."""

    __slots__ = ("buffer", "groups", "skeys", "state")

    def __init__(self, op: Reduce | Aggregate, ctx: SlotContext, max_key_groups: int) -> None:
        super().__init__(op, ctx)
        self.state = state_name(op)
        self.buffer = ctx.state
        self.groups = max_key_groups
        self.skeys = StorageKeys(max_key_groups)

    def process(self, batch: Batch) -> None:
        buffer, state = self.buffer, self.state
        table = buffer.table(state)
        committed, put = buffer.committed, buffer.writer(state)
        partition = batch.partition
        skeys = self.skeys.of(partition)
        update = self.update
        out: list[Element] = []
        append = out.append
        elems = batch.elems
        i, n = 0, len(elems)
        while i < n:
            try:
                for i in range(i, n):  # noqa: B020 - resumes after a failed record
                    k, v, t, o = elems[i]
                    cls = k.__class__
                    if cls is str or cls is bytes or cls is int:
                        skey = skeys.get(k) or skeys.compute(k)
                    else:
                        skey = self.skeys.key(partition, k)
                    acc = table.get(skey, MISSING)
                    if acc is MISSING:
                        acc = committed(state, skey)
                    acc, result = update(acc, v, k)
                    put(skey, acc)
                    append((k, result, t, o))
                break
            except UnstorableState as exc:
                self.refuse(batch, elems[i], exc)
                i += 1
            except Exception as exc:
                self.ctx.fail(self.name, "function", batch, elems[i], exc)
                i += 1
        if out and self.out is not None:
            self.out.process(Batch(batch.topic, partition, out))

    def on_barrier(self, barrier: Barrier) -> None:
        self.skeys.clear()
        super().on_barrier(barrier)

    def update(self, acc: Any, value: Any, key: Any) -> tuple[Any, dict]:
        """The new accumulator (``acc`` is None for a new key) and the result to emit,
        ``{"key": key, ...}``."""
        raise NotImplementedError


class ReduceOp(KeyedOp):
    __slots__ = ("fn",)

    def __init__(self, op: Reduce, ctx: SlotContext, max_key_groups: int) -> None:
        super().__init__(op, ctx, max_key_groups)
        self.fn = op.fn

    def update(self, acc: Any, value: Any, key: Any) -> tuple[Any, dict]:
        new = value if acc is None else self.fn(acc, value)
        return new, _output(key, new)


class AggregateOp(KeyedOp):
    """Runs every field's aggregate function on each record: one plain loop over the
    fields (a comprehension would cost a function call of its own per record), no
    ``result`` call for functions whose result is the accumulator, and the output dict
    built with the key first (no copy)."""

    __slots__ = ("fields", "functions")

    def __init__(self, op: Aggregate, ctx: SlotContext, max_key_groups: int) -> None:
        super().__init__(op, ctx, max_key_groups)
        functions = compile_aggregates(op.fields)
        self.functions = list(functions.values())
        identity = AggregateFunction.result
        self.fields = [
            (name, f.add, None if type(f).result is identity else f.result)
            for name, f in functions.items()
        ]

    def update(self, acc: Any, value: Any, key: Any) -> tuple[Any, dict]:
        if acc is None:
            acc = [f.create() for f in self.functions]
        new: list[Any] = []
        result = {"key": key.decode(errors="replace") if isinstance(key, bytes) else key}
        for (name, add, emit), a in zip(self.fields, acc, strict=True):
            a = add(a, value)
            new.append(a)
            result[name] = a if emit is None else emit(a)
        return new, result
