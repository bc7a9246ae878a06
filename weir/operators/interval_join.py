"""Interval join: each left record with the right records of its key whose event
times lie within ``[t + lower, t + upper]`` of its own ``t`` (Flink's interval join).

Both sides reach the operator through its topic (`operators.sides`). Per key, one
state value holds the records each side may still match, ``{"k": key, "l":
[[time, offset, value], ...], "r": [...]}``. A record that arrives joins at once
with the other side's records in range — emitting ``fn(left, right)`` at the later
of the two times, in the other side's event-time order — and is kept for the
records still to come. Watermark ``wm`` (the minimum over both sides):

- a record at or behind it (``t <= wm``) is late: counted in
  ``weir_records_late_total`` and not joined, as in Flink — so the rows depend on
  event times only, never on arrival order or restarts, as long as nothing is late;
- a left record at ``t`` can match no record still to come once ``t + upper <= wm``,
  a right one at ``t`` once ``t - lower <= wm``: a timer then drops it.

A record its key's state cannot store goes to the dead-letter topic (reason
``state``) and joins nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from weir.operators.chain import Batch, Element, SlotContext
from weir.operators.formats import encode_key
from weir.operators.plan import IntervalJoin
from weir.operators.timers import EVENT, TimerOperator, watermark_state
from weir.state.exceptions import UnstorableState
from weir.state.layout import state_key

LEFT, RIGHT = 0, 1  # the sides, as IntervalJoin.sides orders them


def interval_join_states(node: IntervalJoin) -> tuple[str, str]:
    """(records each side may still match per key, per-partition watermark) state names."""
    return f"{node.name}.records", watermark_state(node.name)


class IntervalJoinOp(TimerOperator):
    """Joins two keyed streams within an interval of event time (module doc)."""

    __slots__ = ("fn", "lower", "upper")

    def __init__(
        self, node: IntervalJoin, ctx: SlotContext, max_key_groups: int, topic: str
    ) -> None:
        super().__init__(node, ctx, max_key_groups, topic, interval_join_states(node)[0])
        self.lower = node.lower_ms
        self.upper = node.upper_ms
        self.fn = node.fn

    def _row(self, key: Any, left: list, right: list) -> Element:
        if self.fn is None:
            text = key.decode(errors="replace") if isinstance(key, bytes) else key
            out = {"key": text, "left": left[2], "right": right[2]}
        else:
            out = self.fn(left[2], right[2])
        return (key, out, max(left[0], right[0]), -1)

    def process(self, batch: Batch) -> None:
        p = batch.partition
        wm = max(self.timers.watermark, self.timers.reached_watermark(p))  # lateness per partition
        lower, upper = self.lower, self.upper
        buffer, state = self.buffer, self.state
        put = buffer.writer(state)
        out: list[Element] = []
        late = 0
        elems = batch.elems
        i, n = 0, len(elems)
        while i < n:
            try:
                for i in range(i, n):  # noqa: B020 - resumes after a failed record
                    k, (side, v), t, o = elems[i]
                    if t <= wm:
                        late += 1
                        continue
                    skey = state_key(p, encode_key(k), self.groups)
                    value = buffer.get(state, skey) or {"k": k, "l": [], "r": []}
                    record = [t, o, v]
                    if side == LEFT:
                        matches = sorted(
                            (r for r in value["r"] if t + lower <= r[0] <= t + upper),
                            key=lambda r: (r[0], r[1]),
                        )
                        rows = [self._row(k, record, r) for r in matches]
                        value["l"].append(record)
                        expires = t + upper
                    else:
                        matches = sorted(
                            (r for r in value["l"] if r[0] + lower <= t <= r[0] + upper),
                            key=lambda r: (r[0], r[1]),
                        )
                        rows = [self._row(k, r, record) for r in matches]
                        value["r"].append(record)
                        expires = t - lower
                    put(skey, value)  # raises UnstorableState: nothing changed, no rows
                    out.extend(rows)
                    self.timers.register(EVENT, expires, skey)
                break
            except UnstorableState as exc:
                self.refuse(batch, elems[i], exc)
                i += 1
            except Exception as exc:
                self.ctx.fail(self.name, "function", batch, elems[i], exc)
                i += 1
        if late:
            self.ctx.late(self.name, late)
        if out and self.out is not None:
            self.out.process(Batch(batch.topic, p, out))

    def _due_times(self, value: Any) -> Iterable[tuple[str, int]]:
        times = {r[0] + self.upper for r in value["l"]} | {r[0] - self.lower for r in value["r"]}
        return [(EVENT, t) for t in times]

    def _fire(self, domain: str, time: int, skey: bytes, fired: dict[int, list[Element]]) -> None:
        value = self.buffer.get(self.state, skey)
        if not value:
            return
        wm = self.timers.watermark
        value["l"] = [r for r in value["l"] if r[0] + self.upper > wm]
        value["r"] = [r for r in value["r"] if r[0] - self.lower > wm]
        if value["l"] or value["r"]:  # fewer records: no larger than what was stored
            self.buffer.put(self.state, skey, value)
        else:
            self.buffer.delete(self.state, skey)
