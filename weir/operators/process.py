"""Keyed process functions: user code with keyed state handles and timers (Flink's
``KeyedProcessFunction``).

    class Dedup(KeyedProcessFunction):
        def process_element(self, value, ctx):
            seen = ctx.value_state("seen")
            if not seen.value():
                seen.update(True)
                ctx.emit(value)
                ctx.timers.register_event_time(ctx.timestamp + 60_000)

        def on_timer(self, timestamp, ctx):
            ctx.value_state("seen").clear()

All of one key's state lives in one state value (``{"v": {...}, "l": {...},
"m": {...}, "t": {"e": [...], "p": [...]}}``), read once per record. Changes
made through the handles are staged and applied only when the function
returns, so a record whose function raises changes nothing and emits nothing
(it goes to the dead-letter topic). So does a record whose changes cannot be
stored — a value the serde cannot encode (JSON: an integer beyond 64 bits, NaN,
a set), or a key's state outgrowing what its changelog accepts, as a list state
appended to forever does: reason ``state``, naming the operator and the key.
A timer's call fails the same way, alone. Timers are deduplicated per key and
time, fired in timestamp order — event-time timers when the watermark passes
them, processing-time timers when the wall clock does — and are checkpointed with the
rest of the key's state (`weir.operators.timers`, which also keeps the watermark each
partition reached, so restored event-time timers fire after a restart even when
no input has anything new).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from weir.operators.chain import Batch, Element, SlotContext
from weir.operators.exceptions import StateRefused
from weir.operators.formats import encode_key
from weir.operators.plan import Process
from weir.operators.timers import EVENT, PROCESSING, TimerOperator, watermark_state
from weir.state.epoch import MISSING
from weir.state.exceptions import UnstorableState
from weir.state.layout import partition_of, state_key


class KeyedProcessFunction:
    """Subclass and override `process_element` (and `on_timer` if you set timers)."""

    def process_element(self, value: Any, ctx: Context) -> None:
        raise NotImplementedError

    def on_timer(self, timestamp: int, ctx: Context) -> None:
        """A timer of this key fired; ``ctx.timestamp`` is its time."""


class ValueState:
    def __init__(self, ctx: Context, name: str) -> None:
        self._ctx, self._name = ctx, name

    def value(self, default: Any = None) -> Any:
        return self._ctx._read("v", self._name, default)

    def update(self, value: Any) -> None:
        self._ctx._write("v", self._name, value)

    def clear(self) -> None:
        self._ctx._write("v", self._name, MISSING)


class ListState:
    def __init__(self, ctx: Context, name: str) -> None:
        self._ctx, self._name = ctx, name

    def get(self) -> list:
        return list(self._ctx._read("l", self._name, []))

    def add(self, value: Any) -> None:
        self._ctx._write("l", self._name, [*self._ctx._read("l", self._name, []), value])

    def update(self, values: list) -> None:
        self._ctx._write("l", self._name, list(values))

    def clear(self) -> None:
        self._ctx._write("l", self._name, MISSING)


class MapState:
    """A dict per key; map keys are strings (state is stored as JSON)."""

    def __init__(self, ctx: Context, name: str) -> None:
        self._ctx, self._name = ctx, name

    def _map(self) -> dict:
        return self._ctx._read("m", self._name, {})

    def get(self, key: str, default: Any = None) -> Any:
        return self._map().get(key, default)

    def put(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"map state keys are strings, got {type(key).__name__}")
        self._ctx._write("m", self._name, {**self._map(), key: value})

    def remove(self, key: str) -> None:
        m = dict(self._map())
        m.pop(key, None)
        self._ctx._write("m", self._name, m or MISSING)

    def items(self) -> list[tuple[str, Any]]:
        return list(self._map().items())

    def keys(self) -> list[str]:
        return list(self._map())

    def clear(self) -> None:
        self._ctx._write("m", self._name, MISSING)


class TimerService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def register_event_time(self, timestamp: int) -> None:
        self._ctx._timer(EVENT, int(timestamp), True)

    def register_processing_time(self, timestamp: int) -> None:
        self._ctx._timer(PROCESSING, int(timestamp), True)

    def delete_event_time(self, timestamp: int) -> None:
        self._ctx._timer(EVENT, int(timestamp), False)

    def delete_processing_time(self, timestamp: int) -> None:
        self._ctx._timer(PROCESSING, int(timestamp), False)

    @property
    def watermark(self) -> int:
        return self._ctx._op.timers.watermark

    @property
    def processing_time(self) -> int:
        """The processing time (the wall clock), epoch ms."""
        return self._ctx._op.ctx.now_ms()


class Context:
    """What a process function sees for one record or timer of one key."""

    def __init__(self, op: ProcessOp, key: Any, stored: dict, timestamp: int) -> None:
        self._op = op
        self.key = key
        self.timestamp = timestamp
        self._stored = stored
        self._staged: dict[tuple[str, str], Any] = {}
        self._timers: dict[tuple[str, int], bool] = {}
        self.outputs: list[Any] = []
        self.timers = TimerService(self)
        self.time_domain: str | None = None  # in on_timer: "event" or "processing"

    def emit(self, value: Any) -> None:
        """Send ``value`` downstream (keyed by this key, at ``ctx.timestamp``)."""
        self.outputs.append(value)

    def value_state(self, name: str) -> ValueState:
        return ValueState(self, name)

    def list_state(self, name: str) -> ListState:
        return ListState(self, name)

    def map_state(self, name: str) -> MapState:
        return MapState(self, name)

    def _read(self, kind: str, name: str, default: Any) -> Any:
        value = self._staged.get((kind, name), MISSING)
        if value is MISSING and (kind, name) not in self._staged:
            value = self._stored.get(kind, {}).get(name, MISSING)
        return default if value is MISSING else value

    def _write(self, kind: str, name: str, value: Any) -> None:
        self._staged[(kind, name)] = value

    def _timer(self, domain: str, timestamp: int, add: bool) -> None:
        self._timers[(domain, timestamp)] = add

    def _changes(self) -> dict | None:
        """The key's new stored value (None: unchanged; {} = empty)."""
        if not self._staged and not self._timers:
            return None
        new = copy.copy(self._stored)
        for (kind, name), value in self._staged.items():
            section = dict(new.get(kind, {}))
            if value is MISSING:
                section.pop(name, None)
            else:
                section[name] = value
            new[kind] = section
        if self._timers:
            timers = {d: set(ts) for d, ts in self._stored.get("t", {}).items()}
            for (domain, ts), add in self._timers.items():
                times = timers.setdefault(domain, set())
                if add:
                    times.add(ts)
                else:
                    times.discard(ts)
            new["t"] = {d: sorted(ts) for d, ts in timers.items() if ts}
        sections = {kind: s for kind, s in new.items() if kind != "k" and s}
        return {"k": self.key, **sections} if sections else {}


def process_states(node: Process) -> tuple[str, str]:
    """(keyed values with their timers, per-partition watermark) state names."""
    return f"{node.name}.keyed", watermark_state(node.name)


class ProcessOp(TimerOperator):
    """Runs a `KeyedProcessFunction` over a keyed stream."""

    __slots__ = ("fn",)

    def __init__(self, node: Process, ctx: SlotContext, max_key_groups: int, topic: str) -> None:
        super().__init__(node, ctx, max_key_groups, topic, process_states(node)[0])
        self.fn: KeyedProcessFunction = node.fn

    def _context(self, key: Any, stored: dict, timestamp: int, partition: int) -> Context:
        """The context a function call for ``key`` of ``partition`` sees."""
        return Context(self, key, stored, timestamp)

    def _load(self, skey: bytes) -> dict:
        return self.buffer.get(self.state, skey) or {}  # None if deleted or absent

    def _store(self, skey: bytes, ctx: Context) -> list[Element]:
        new = ctx._changes()
        if new is not None:
            if new:
                self.buffer.put(self.state, skey, new)  # raises UnstorableState: nothing changed
            else:
                self.buffer.delete(self.state, skey)
            for (domain, ts), add in ctx._timers.items():
                if add:
                    self.timers.register(domain, ts, skey)
        key = ctx.key
        return [(key, out, ctx.timestamp, -1) for out in ctx.outputs]

    def process(self, batch: Batch) -> None:
        p = batch.partition
        out: list[Element] = []
        elems = batch.elems
        i, n = 0, len(elems)
        while i < n:
            try:
                for i in range(i, n):  # noqa: B020 - resumes after a failed record
                    k, v, t, _ = elems[i]
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

    def _due_times(self, value: Any) -> Iterable[tuple[str, int]]:
        return [(domain, ts) for domain, times in value.get("t", {}).items() for ts in times]

    def _fire(self, domain: str, ts: int, skey: bytes, fired: dict[int, list[Element]]) -> None:
        stored = self._load(skey)
        if ts not in stored.get("t", {}).get(domain, ()):
            return  # deleted, or already fired
        p = partition_of(skey)
        ctx = self._context(stored.get("k"), stored, ts, p)
        ctx.time_domain = "event" if domain == EVENT else "processing"
        ctx._timer(domain, ts, False)
        try:
            self.fn.on_timer(ts, ctx)
            out = self._store(skey, ctx)
        except Exception as exc:
            reason, error = "timer", exc
            if isinstance(exc, UnstorableState):
                error = StateRefused(self.name, ctx.key, exc.problem)
                reason = error.reason
            batch = Batch(self.topic, p, [])
            self.ctx.fail(self.name, reason, batch, (ctx.key, {"timer": ts}, ts, -1), error)
            # The call changes nothing, but its timer is spent: store only that.
            ctx._staged.clear()
            ctx._timers = {(domain, ts): False}
            ctx.outputs.clear()
            out = self._store(skey, ctx)
        fired.setdefault(p, []).extend(out)
