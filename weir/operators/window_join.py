"""Window join: two keyed streams joined per key and event-time window.

Both sides reach the operator through its topic (`operators.sides`), so records
of a key meet in one partition whatever the inputs' partitioning. Per key, one
state value holds the key's open windows, ``{"k": key, "w": [[start, end, lefts,
rights, fired], ...]}``, each side's records as ``[time, offset, value]``. A
record goes into every window `WindowSpec.assign` gives it (sessions then merge
the overlapping windows of both sides into one). Window ``[start, end)`` fires
when the watermark — the minimum over both sides — reaches ``end - 1``:

- ``apply(fn)`` emits ``fn(left, right)`` for every pair (lefts in event-time
  order, each with the rights in event-time order); for a window without right
  records, ``how="left"`` and ``"full"`` emit ``fn(left, None)`` per left record,
  and for one without left records ``"full"`` emits ``fn(None, right)``;
- ``process(fn)`` calls ``fn(key, (start, end), lefts, rights)`` once, if the
  window qualifies (inner: both sides have records; left: the left side has;
  full: either), and emits each item it returns.

Outputs carry the window's last time, ``end - 1``, as their event time. With
``allowed_lateness`` a fired window stays until ``end - 1 + lateness``: a late
record in it emits what it adds — its pairs, or its outer row when the other side
is empty (rows emitted before stand); ``process`` re-runs over the whole window.
Records for windows already gone are late: counted in ``weir_records_late_total``.
A record that would make its key's windows unstorable goes to the dead-letter topic
(reason ``state``) and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from weir.operators.chain import Batch, Element, SlotContext
from weir.operators.formats import encode_key
from weir.operators.plan import WindowJoin
from weir.operators.timers import EVENT, TimerOperator, watermark_state
from weir.state.exceptions import UnstorableState
from weir.state.layout import partition_of, state_key

LEFT, RIGHT = 0, 1  # the sides, as WindowJoin.sides orders them
START, END, LEFTS, RIGHTS, FIRED = range(5)  # the fields of a stored window


def window_join_states(node: WindowJoin) -> tuple[str, str]:
    """(open windows per key, per-partition watermark) state names."""
    return f"{node.name}.windows", watermark_state(node.name)


def _order(records: list[list]) -> list[list]:
    return sorted(records, key=lambda r: (r[0], r[1]))


class WindowJoinOp(TimerOperator):
    """Joins two keyed streams per key and window (module doc)."""

    __slots__ = ("fn", "how", "lateness", "pairs", "spec")

    def __init__(self, node: WindowJoin, ctx: SlotContext, max_key_groups: int, topic: str) -> None:
        super().__init__(node, ctx, max_key_groups, topic, window_join_states(node)[0])
        self.spec = node.spec
        self.how = node.how
        self.pairs = node.function == "apply"
        self.fn = node.fn
        self.lateness: int = node.lateness_ms

    # -- records ----------------------------------------------------------------
    def process(self, batch: Batch) -> None:
        p = batch.partition
        wm = max(self.timers.watermark, self.timers.reached_watermark(p))  # lateness per partition
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
                    skey = state_key(p, encode_key(k), self.groups)
                    value = buffer.get(state, skey) or {"k": k, "w": []}
                    rows = self._add(value, side, [t, o, v], wm)
                    if rows is None:
                        late += 1
                        continue
                    put(skey, value)  # raises UnstorableState: nothing changed, no rows
                    out.extend(rows)
                    self.timers.register(EVENT, self._due(value["w"]), skey)
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

    def _add(self, value: dict, side: int, record: list, wm: int) -> list[Element] | None:
        """Put a record into its windows; the rows a fired window emits for it (None:
        every window of it is gone). Outputs are computed before the state changes, so
        a function that raises changes nothing."""
        lateness, key = self.lateness, value["k"]
        windows = value["w"]
        index = {(w[START], w[END]): w for w in windows}
        targets = [
            (start, end, index.get((start, end)))
            for start, end in self.spec.assign(record[0])
            if end - 1 + lateness > wm
        ]
        if not targets:
            return None
        rows: list[Element] = []
        for _, _, w in targets:
            if w is not None and w[FIRED]:
                rows.extend(self._late_rows(key, w, side, record))
        for start, end, w in targets:
            if w is None:
                w = [start, end, [], [], False]
                windows.append(w)
            w[LEFTS if side == LEFT else RIGHTS].append(record)
        if self.spec.merging:
            self._merge_sessions(value)
        else:
            windows.sort(key=lambda w: w[START])
        return rows

    def _merge_sessions(self, value: dict) -> None:
        merged: list[list] = []
        for w in sorted(value["w"], key=lambda w: w[START]):
            if merged and w[START] < merged[-1][END]:
                last = merged[-1]
                last[END] = max(last[END], w[END])
                last[LEFTS] = last[LEFTS] + w[LEFTS]
                last[RIGHTS] = last[RIGHTS] + w[RIGHTS]
            else:
                merged.append(w)
        value["w"] = merged

    # -- results ------------------------------------------------------------------
    def _row(self, key: Any, w: list, left: Any, right: Any) -> Element:
        if self.fn is None:
            text = key.decode(errors="replace") if isinstance(key, bytes) else key
            out = {"key": text, "window_start": w[START], "window_end": w[END],
                   "left": left, "right": right}  # fmt: skip
        else:
            out = self.fn(left, right)
        return (key, out, w[END] - 1, -1)

    def _qualifies(self, lefts: list, rights: list) -> bool:
        if self.how == "inner":
            return bool(lefts and rights)
        if self.how == "left":
            return bool(lefts)
        return bool(lefts or rights)

    def _rows(self, key: Any, w: list) -> list[Element]:
        """Everything a window emits when it fires."""
        lefts, rights = _order(w[LEFTS]), _order(w[RIGHTS])
        if not self.pairs:
            if not self._qualifies(lefts, rights):
                return []
            values = ([r[2] for r in lefts], [r[2] for r in rights])
            results = self.fn(key, (w[START], w[END]), *values)
            return [(key, out, w[END] - 1, -1) for out in results or ()]
        if lefts and rights:
            return [self._row(key, w, a[2], b[2]) for a in lefts for b in rights]
        if lefts and self.how != "inner":
            return [self._row(key, w, a[2], None) for a in lefts]
        if rights and self.how == "full":
            return [self._row(key, w, None, b[2]) for b in rights]
        return []

    def _late_rows(self, key: Any, w: list, side: int, record: list) -> list[Element]:
        """What a late record adds to a fired window (module doc)."""
        if not self.pairs:
            lefts, rights = list(w[LEFTS]), list(w[RIGHTS])
            (lefts if side == LEFT else rights).append(record)
            return self._rows(key, [w[START], w[END], lefts, rights, True])
        if side == LEFT:
            if w[RIGHTS]:
                return [self._row(key, w, record[2], b[2]) for b in _order(w[RIGHTS])]
            return [self._row(key, w, record[2], None)] if self.how != "inner" else []
        if w[LEFTS]:
            return [self._row(key, w, a[2], record[2]) for a in _order(w[LEFTS])]
        return [self._row(key, w, None, record[2])] if self.how == "full" else []

    # -- timers ---------------------------------------------------------------------
    def _due(self, windows: list) -> int:
        """When the key's next window fires (at end - 1) or, fired, expires."""
        return min(w[END] - 1 + (self.lateness if w[FIRED] else 0) for w in windows)

    def _due_times(self, value: Any) -> Iterable[tuple[str, int]]:
        return [(EVENT, self._due(value["w"]))] if value["w"] else []

    def _fire(self, domain: str, time: int, skey: bytes, fired: dict[int, list[Element]]) -> None:
        value = self.buffer.get(self.state, skey)
        if not value:
            return
        wm = self.timers.watermark
        p = partition_of(skey)
        out = fired.setdefault(p, [])
        keep = []
        for w in value["w"]:
            if not w[FIRED] and w[END] - 1 <= wm:
                try:
                    out.extend(self._rows(value["k"], w))
                except Exception as exc:
                    elem = (value["k"], {"window": [w[START], w[END]]}, w[END] - 1, -1)
                    self.ctx.fail(self.name, "function", Batch(self.topic, p, []), elem, exc)
                w[FIRED] = True
            if not (w[FIRED] and w[END] - 1 + self.lateness <= wm):
                keep.append(w)
        value["w"] = keep
        if keep:  # fewer windows, or flags set: no larger than what was stored
            self.buffer.put(self.state, skey, value)
            self.timers.register(EVENT, self._due(keep), skey)
        else:
            self.buffer.delete(self.state, skey)
