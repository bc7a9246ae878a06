"""Broadcast state: a keyed stream connected with a broadcast stream of rules (Flink's
``KeyedBroadcastProcessFunction``).

    class Matcher(KeyedBroadcastProcessFunction):
        def process_broadcast_element(self, rule, ctx):
            rules = ctx.broadcast_state("rules")
            if rule.get("remove"):
                rules.remove(rule["name"])
            else:
                rules.put(rule["name"], rule)

        def process_element(self, event, ctx):
            last = ctx.value_state("last")
            for name, rule in ctx.broadcast_state("rules").items():
                if last.value() == rule["first"] and event["shape"] == rule["second"]:
                    ctx.emit({"user": ctx.key, "rule": name})
            last.update(event["shape"])

The broadcast side is written to *every* partition of the operator's topic
(`operators.sides`), so each partition sees every rule, in one order with its
keyed records that is fixed once committed. The broadcast state is kept per
partition of that topic, as a partition's own entry (`state.layout.partition_key`)
of the state ``<name>.broadcast``: checkpointed, restored and moved with the
partition like keyed state, so a worker that takes a partition over rebuilds it
from the changelog. Every slot sharing a partition sees every rule (the router
gives keyless records of such a topic to all of them) and keeps the same copy.

- ``process_broadcast_element(value, ctx)`` may change the broadcast state
  (``ctx.broadcast_state(name)``: a map with string keys), emit, and visit every
  key's state in its partition (``ctx.apply_to_keyed_state(fn)`` calls
  ``fn(key, key_ctx)`` per key, in key order, with the keyed handles of a process
  function).
- ``process_element(value, ctx)`` sees the broadcast state read-only, its key's
  value/list/map state, timers and ``emit``; ``on_timer(ts, ctx)`` likewise.

Changes a call makes are applied only when it returns: a call that raises
changes nothing (its record goes to the dead-letter topic). Functions must be
deterministic (no wall clock, no randomness) for every partition's copy of the
broadcast state to be the same.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from weir.operators.chain import Batch, Element, SlotContext
from weir.operators.formats import encode_key
from weir.operators.plan import BroadcastProcess
from weir.operators.process import Context, ProcessOp, process_states
from weir.state.exceptions import UnstorableState
from weir.state.layout import key_group_of, partition_key, state_key

KEYED, BROADCAST = 0, 1  # the sides, as BroadcastProcess.sides orders them


class KeyedBroadcastProcessFunction:
    """Subclass and override `process_element` and `process_broadcast_element` (and
    `on_timer` if you set timers)."""

    def process_element(self, value: Any, ctx: KeyedContext) -> None:
        raise NotImplementedError

    def process_broadcast_element(self, value: Any, ctx: BroadcastContext) -> None:
        raise NotImplementedError

    def on_timer(self, timestamp: int, ctx: KeyedContext) -> None:
        """A timer of this key fired; ``ctx.timestamp`` is its time."""


def broadcast_states(node: BroadcastProcess) -> tuple[str, str, str]:
    """(keyed values with timers, per-partition watermark, broadcast state) names."""
    return (*process_states(node), f"{node.name}.broadcast")


class BroadcastState:
    """One named map of the broadcast state; keys are strings (stored as JSON)."""

    def __init__(self, read: Callable[[], dict], write: Callable[[dict], None] | None) -> None:
        self._read = read
        self._write = write

    def get(self, key: str, default: Any = None) -> Any:
        return self._read().get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self._read()

    def items(self) -> list[tuple[str, Any]]:
        return list(self._read().items())

    def keys(self) -> list[str]:
        return list(self._read())

    def put(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"broadcast state keys are strings, got {type(key).__name__}")
        self._writable()({**self._read(), key: value})

    def remove(self, key: str) -> None:
        m = dict(self._read())
        m.pop(key, None)
        self._writable()(m)

    def clear(self) -> None:
        self._writable()({})

    def _writable(self) -> Callable[[dict], None]:
        if self._write is None:
            raise TypeError(
                "the broadcast state is read-only here; change it in process_broadcast_element"
            )
        return self._write


class KeyedContext(Context):
    """A process function's context (`operators.process.Context`) that also reads the
    broadcast state of the record's partition."""

    def __init__(self, op: ProcessOp, key: Any, stored: dict, timestamp: int, shared: dict):
        super().__init__(op, key, stored, timestamp)
        self._shared = shared

    def broadcast_state(self, name: str) -> BroadcastState:
        return BroadcastState(lambda: self._shared.get(name, {}), None)


class BroadcastContext:
    """What ``process_broadcast_element`` sees for one broadcast record in one partition."""

    def __init__(self, op: BroadcastProcessOp, partition: int, stored: dict, timestamp: int):
        self._op = op
        self._partition = partition
        self._stored = stored
        self._staged: dict[str, dict] = {}
        self._keyed: list[tuple[bytes, KeyedContext]] = []
        self.timestamp = timestamp
        self.outputs: list[Any] = []

    def emit(self, value: Any) -> None:
        """Send ``value`` downstream (without a key, at ``ctx.timestamp``)."""
        self.outputs.append(value)

    @property
    def watermark(self) -> int:
        return self._op.timers.watermark

    def broadcast_state(self, name: str) -> BroadcastState:
        def read() -> dict:
            return self._staged[name] if name in self._staged else self._stored.get(name, {})

        def write(value: dict) -> None:
            self._staged[name] = value

        return BroadcastState(read, write)

    def apply_to_keyed_state(self, fn: Callable[[Any, KeyedContext], None]) -> None:
        """``fn(key, key_ctx)`` for every key with state in this partition (this slot's
        share of it), in key order; ``key_ctx`` has the keyed state handles, timers and
        ``emit`` of a process function (outputs keyed by that key)."""
        op = self._op
        for skey, stored in op.buffer.scan(op.state, self._partition):
            if op.key_groups is not None and key_group_of(skey) not in op.key_groups:
                continue
            ctx = op._context(stored.get("k"), stored, self.timestamp, self._partition)
            ctx._shared = self._view()
            fn(ctx.key, ctx)
            self._keyed.append((skey, ctx))

    def _view(self) -> dict:
        """The broadcast state as this call has changed it so far."""
        return {**self._stored, **self._staged}

    def _changes(self) -> dict | None:
        """The partition's new broadcast state (None: unchanged; {} = empty)."""
        if not self._staged:
            return None
        new = {**copy.copy(self._stored), **self._staged}
        return {name: m for name, m in new.items() if m}


class BroadcastProcessOp(ProcessOp):
    """Runs a `KeyedBroadcastProcessFunction` over the records of both sides, in the
    order of the operator's topic."""

    __slots__ = ("broadcast", "key_groups", "shared")

    def __init__(
        self, node: BroadcastProcess, ctx: SlotContext, max_key_groups: int, topic: str
    ) -> None:
        super().__init__(node, ctx, max_key_groups, topic)
        self.broadcast = broadcast_states(node)[2]
        self.key_groups: range | None = None
        self.shared: dict[int, dict] = {}  # partition -> its broadcast state, cached

    def _context(self, key: Any, stored: dict, timestamp: int, partition: int) -> KeyedContext:
        return KeyedContext(self, key, stored, timestamp, self._broadcast_of(partition))

    def _broadcast_of(self, partition: int) -> dict:
        state = self.shared.get(partition)
        if state is None:
            state = self.buffer.get(self.broadcast, partition_key(partition)) or {}
            self.shared[partition] = state
        return state

    def own(self, partitions: set[int], key_groups: range | None) -> None:
        self.key_groups = key_groups
        self.shared.clear()
        super().own(partitions, key_groups)

    def process(self, batch: Batch) -> None:
        p = batch.partition
        out: list[Element] = []
        elems = batch.elems
        i, n = 0, len(elems)
        while i < n:
            try:
                for i in range(i, n):  # noqa: B020 - resumes after a failed record
                    k, (side, v), t, _ = elems[i]
                    if side == BROADCAST:
                        out.extend(self._broadcast_element(p, v, t))
                        continue
                    skey = state_key(p, encode_key(k), self.groups)
                    ctx = self._context(k, self._load(skey), t, p)
                    self.fn.process_element(v, ctx)
                    out.extend(self._store(skey, ctx))
                break
            except UnstorableState as exc:
                self.refuse(batch, elems[i], exc)
                i += 1
            except Exception as exc:
                self.ctx.fail(self.name, "function", batch, elems[i], exc)
                i += 1
        if out and self.out is not None:
            self.out.process(Batch(batch.topic, p, out))

    def _broadcast_element(self, partition: int, value: Any, t: int) -> list[Element]:
        """One broadcast record: the function's changes to the broadcast state and to
        the keys it visited are applied together once it has returned — all of them,
        or (a value that cannot be stored) none: those already stored are put back."""
        stored = self._broadcast_of(partition)
        ctx = BroadcastContext(self, partition, stored, t)
        self.fn.process_broadcast_element(value, ctx)
        out: list[Element] = []
        done: list[tuple[str, bytes, Any]] = []  # (state, key, value before) of writes made
        try:
            new = ctx._changes()
            if new is not None:
                skey = partition_key(partition)
                self._write(self.broadcast, skey, new)
                done.append((self.broadcast, skey, stored))
            for skey, keyed in ctx._keyed:
                out.extend(self._store(skey, keyed))
                done.append((self.state, skey, keyed._stored))
        except UnstorableState:
            for state, skey, before in reversed(done):
                self._write(state, skey, before)
            raise
        if new is not None:
            self.shared[partition] = new
        out.extend((None, v, t, -1) for v in ctx.outputs)
        return out

    def _write(self, state: str, skey: bytes, value: dict) -> None:
        """Store ``value`` (empty: delete)."""
        if value:
            self.buffer.put(state, skey, value)
        else:
            self.buffer.delete(state, skey)
