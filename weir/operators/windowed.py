"""Event-time windows on a keyed stream: contents in keyed state, fired by watermarks.

Per key, one state value holds the key's open windows,
``{"k": key, "w": [[start, end, acc, fired], ...]}``. A record is added to each
window `WindowSpec.assign` gives it (session windows then merge overlapping
ones). Window ``[start, end)`` fires when the watermark reaches ``end - 1``;
with ``allowed_lateness`` it stays until ``end - 1 + lateness``, and a late
record within that re-emits the updated result. Records for windows already
gone are late: counted in ``weir_records_late_total`` and, if configured,
written to the late topic with the reason. A record that would make the key's
windows unstorable (a value the serde cannot encode, or contents outgrowing what the
changelog accepts: a ``process`` window keeps every element) fails alone: it goes to
the dead-letter topic with reason ``state``, naming the operator and the key, and the
windows stay as they were.

A key's timer is the earliest time one of its windows fires or expires; it
is not stored separately but read back from the window state when the slot is
given a partition (`weir.operators.timers`, which also keeps the watermark each
partition reached, so after a restart or a move a record that was late before
is still late, and no window fires twice).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import Any

import orjson

from weir.operators.aggregates import compile_aggregates
from weir.operators.chain import Barrier, Batch, Element, SlotContext
from weir.operators.formats import encode_key
from weir.operators.plan import Window
from weir.operators.skeys import StorageKeys
from weir.operators.timers import EVENT, TimerOperator, watermark_state
from weir.state.epoch import DELETED, MISSING
from weir.state.exceptions import UnstorableState
from weir.state.layout import partition_of

_START = itemgetter(0)  # of a window [start, end, acc, fired]


class WindowFunction:
    """create/add/merge/result over a window's contents."""

    def create(self) -> Any:
        raise NotImplementedError

    def add(self, acc: Any, value: Any) -> Any:
        raise NotImplementedError

    def merge(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def result(self, key: Any, start: int, end: int, acc: Any) -> Any:
        raise NotImplementedError


class AggregateWindow(WindowFunction):
    """The aggregate functions of ``aggregate(...)`` over a window. ``add`` runs once per
    record and window (several for sliding windows): a plain loop, as in
    `weir.operators.keyed.AggregateOp` (a comprehension costs a call of its own)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        functions = compile_aggregates(fields)
        self.names = list(functions)
        self.functions = list(functions.values())
        self.adds = [f.add for f in self.functions]

    def create(self) -> list:
        return [f.create() for f in self.functions]

    def add(self, acc: list, value: Any) -> list:
        adds = self.adds
        if len(adds) == 1:  # aggregate(count="count") and the like: no loop at all
            return [adds[0](acc[0], value)]
        new = []
        for add, a in zip(adds, acc, strict=True):
            new.append(add(a, value))
        return new

    def merge(self, a: list, b: list) -> list:
        return [f.merge(x, y) for f, x, y in zip(self.functions, a, b, strict=True)]

    def result(self, key: Any, start: int, end: int, acc: list) -> dict:
        return {n: f.result(a) for n, f, a in zip(self.names, self.functions, acc, strict=True)}


class ReduceWindow(WindowFunction):
    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        self.fn = fn

    def create(self) -> None:
        return None

    def add(self, acc: Any, value: Any) -> Any:
        return value if acc is None else self.fn(acc, value)

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None else a if b is None else self.fn(a, b)

    def result(self, key: Any, start: int, end: int, acc: Any) -> Any:
        return acc


class ProcessWindow(WindowFunction):
    """A full-window function: ``fn(key, (start, end), elements)`` sees every element."""

    def __init__(self, fn: Callable[[Any, tuple[int, int], list], Any]) -> None:
        self.fn = fn

    def create(self) -> list:
        return []

    def add(self, acc: list, value: Any) -> list:
        return [*acc, value]

    def merge(self, a: list, b: list) -> list:
        return a + b

    def result(self, key: Any, start: int, end: int, acc: list) -> Any:
        return self.fn(key, (start, end), acc)


def window_function(node: Window) -> WindowFunction:
    kind = node.function
    if kind == "aggregate":
        return AggregateWindow(node.fields)
    if kind == "reduce":
        return ReduceWindow(node.fn)
    return ProcessWindow(node.fn)


def window_states(node: Window) -> tuple[str, str]:
    """(window contents, per-partition watermark) state names."""
    return f"{node.name}.windows", watermark_state(node.name)


class WindowOp(TimerOperator):
    """Assigns records to windows and fires them as the watermark advances."""

    __slots__ = ("fn", "late_topic", "lateness", "skeys", "spec")

    def __init__(self, node: Window, ctx: SlotContext, max_key_groups: int, topic: str) -> None:
        super().__init__(node, ctx, max_key_groups, topic, window_states(node)[0])
        self.spec = node.spec
        self.lateness: int = node.lateness_ms
        self.late_topic: str | None = node.late_topic
        self.fn = window_function(node)
        self.skeys = StorageKeys(max_key_groups)  # this epoch's (`weir.operators.skeys`)

    # -- records ------------------------------------------------------------
    def process(self, batch: Batch) -> None:
        p = batch.partition
        wm = max(self.timers.watermark, self.timers.reached_watermark(p))  # lateness per partition
        buffer, state = self.buffer, self.state
        table, committed, put = buffer.table(state), buffer.committed, buffer.writer(state)
        skeys = self.skeys.of(p)
        out: list[Element] = []
        late: list[tuple[bytes | None, bytes, int, int]] = []
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
                        skey = self.skeys.key(p, k)
                    value = table.get(skey, MISSING)
                    if value is MISSING:
                        value = committed(state, skey)
                    elif value is DELETED:
                        value = None
                    value = value or {"k": k, "w": []}
                    mark = len(out)
                    if self._add(value, skey, v, t, wm, out):
                        try:
                            put(skey, value)
                        except UnstorableState:
                            del out[mark:]  # updates of windows that fired: not made
                            raise
                    else:
                        late.append((encode_key(k), self._late_record(v, t, wm), o, t))
                break
            except UnstorableState as exc:
                self.refuse(batch, elems[i], exc)
                i += 1
            except Exception as exc:
                self.ctx.fail(self.name, "function", batch, elems[i], exc)
                i += 1
        if late:
            self.ctx.late(self.name, len(late))
            if self.late_topic is not None:
                self.ctx.produce(self.late_topic, late, batch)
        if out and self.out is not None:
            self.out.process(Batch(batch.topic, p, out))

    def on_barrier(self, barrier: Barrier) -> None:
        self.skeys.clear()
        super().on_barrier(barrier)

    def _add(self, value: dict, skey: bytes, v: Any, t: int, wm: int, out: list) -> bool:
        """Add one record to its windows; False if every window of it is already gone."""
        fn, lateness = self.fn, self.lateness
        windows = value["w"]
        index = {(w[0], w[1]): w for w in windows}  # sliding: many open windows per key
        updates = []
        for start, end in self.spec.assign(t):
            if end - 1 + lateness <= wm:
                continue  # this window was fired and dropped
            entry = index.get((start, end))
            acc = fn.add(fn.create() if entry is None else entry[2], v)
            updates.append((start, end, entry, acc))
        if not updates:
            return False
        added = False
        for start, end, entry, acc in updates:  # all adds succeeded: now change the state
            if entry is None:
                windows.append([start, end, acc, False])
                added = True
            else:
                entry[2] = acc
                if entry[3]:  # fired already, within allowed lateness: emit the update now
                    out.append(self._result(value["k"], entry))
        if self.spec.merging:
            self._merge_sessions(value)
        elif added:
            windows.sort(key=_START)
        if added or self.spec.merging:  # otherwise the key's timer is already set
            self._schedule(skey, value["w"])
        return True

    def _merge_sessions(self, value: dict) -> None:
        windows = sorted(value["w"], key=_START)
        merged: list[list] = []
        for w in windows:
            if merged and w[0] < merged[-1][1]:
                last = merged[-1]
                last[1] = max(last[1], w[1])
                last[2] = self.fn.merge(last[2], w[2])
                last[3] = last[3] and w[3]
            else:
                merged.append(list(w))
        value["w"] = merged

    def _late_record(self, v: Any, t: int, wm: int) -> bytes:
        reason = f"late: timestamp {t} is past the allowed lateness at watermark {wm}"
        try:
            return orjson.dumps({"record": v, "timestamp": t, "reason": reason})
        except TypeError:
            return orjson.dumps({"record": repr(v), "timestamp": t, "reason": reason})

    def _result(self, key: Any, w: list) -> Element:
        result = self.fn.result(key, w[0], w[1], w[2])
        if isinstance(key, bytes):
            key = key.decode(errors="replace")
        if isinstance(result, dict):
            output = {"key": key, "window_start": w[0], "window_end": w[1], **result}
        else:
            output = {"key": key, "window_start": w[0], "window_end": w[1], "value": result}
        return (key, output, w[1] - 1, -1)

    # -- timers -------------------------------------------------------------
    def _due(self, windows: list) -> int:
        """When the key's next window fires (at end - 1) or, fired, expires."""
        return min(w[1] - 1 + (self.lateness if w[3] else 0) for w in windows)

    def _schedule(self, skey: bytes, windows: list) -> None:
        self.timers.register(EVENT, self._due(windows), skey)

    def _due_times(self, value: Any) -> Iterable[tuple[str, int]]:
        return [(EVENT, self._due(value["w"]))] if value["w"] else []

    def advance(self, watermark: int, now: int = 0) -> None:
        """The watermark moved: fire every window it has passed (``now`` is unused).
        Only a move fires (a rise; a fall when a partition behind it joined, whose
        windows it passed are due): a window opened behind the watermark, within its
        allowed lateness, fires at the next move, with the records that came until then."""
        if watermark != self.timers.watermark:
            super().advance(watermark, now)

    def _fire(self, domain: str, time: int, skey: bytes, fired: dict[int, list[Element]]) -> None:
        wm = self.timers.watermark
        value = self.buffer.get(self.state, skey)  # None if deleted or absent
        if not value:
            return
        out = fired.setdefault(partition_of(skey), [])
        keep = []
        for w in value["w"]:
            if not w[3] and w[1] - 1 <= wm:
                out.append(self._result(value["k"], w))
                w[3] = True
            if not (w[3] and w[1] - 1 + self.lateness <= wm):
                keep.append(w)
        value["w"] = keep
        if keep:  # fewer windows, or flags set: no larger than what was stored
            self.buffer.put(self.state, skey, value)
            self._schedule(skey, keep)
        else:
            self.buffer.delete(self.state, skey)
