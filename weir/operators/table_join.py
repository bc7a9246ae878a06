"""Stream-table join as of event time: each stream record meets the table value
that was current at its event time.

"Current" (README: "Stream-table join"): for a stream record with event time
``t``, the value of the table update of its key with the latest event time at
or before ``t`` — an update at exactly ``t`` counts — or nothing if there is
none or that update deleted the key. This depends on event times only, not on
which input was read faster, so a restart, a replay or another worker count
gives the same rows.

To know which update is current at ``t``, the join waits until the watermark
(the minimum over both inputs, `operators.sides`) has passed ``t``: no table
update at or before ``t`` can come after that. Per key, one state value holds

- ``"v"``: the table's versions ``[time, value]`` in event-time order (a deleted
  key's version has the value None), and
- ``"s"``: the stream records waiting for the watermark, ``[time, offset, value]``;

a timer at each waiting record's time emits it, joined, once the watermark
reaches that time. Versions the watermark has passed are dropped but the newest
of them, which is current from then on and is kept as current since forever
(time `NO_TIME`); a deleted key's last version is dropped with it. Records at or
behind the watermark when they arrive are late (counted in
``weir_records_late_total``): a stream record is joined at once with the version
current at its time among those kept; a table update still becomes a version,
current for later records only. A record whose state the key cannot store goes to
the dead-letter topic (reason ``state``) and changes nothing.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from typing import Any

from weir.operators.chain import Batch, Element, SlotContext
from weir.operators.formats import encode_key
from weir.operators.plan import JoinTable
from weir.operators.timers import EVENT, NO_TIME, TimerOperator, watermark_state
from weir.state.exceptions import UnstorableState
from weir.state.layout import partition_of, state_key

STREAM, TABLE = 0, 1  # the sides, as JoinTable.sides orders them


def table_join_states(node: JoinTable) -> tuple[str, str]:
    """(versions and waiting records per key, per-partition watermark) state names."""
    return f"{node.name}.rows", watermark_state(node.name)


def _time(entry: list) -> int:
    return entry[0]


def as_of(versions: list[list], t: int) -> Any:
    """The value current at ``t``: the last version at or before it (None: none, or
    deleted)."""
    i = bisect_right(versions, t, key=_time)
    return versions[i - 1][1] if i else None


def prune(versions: list[list], watermark: int) -> None:
    """Drop the versions the watermark has passed but the newest, kept as current since
    forever (unless it deleted the key)."""
    i = bisect_right(versions, watermark, key=_time)
    if i == 0:
        return
    newest = versions[i - 1][1]
    del versions[:i]
    if newest is not None:
        versions.insert(0, [NO_TIME, newest])


class TableJoinOp(TimerOperator):
    """Joins a keyed stream with a table as of event time (module doc)."""

    __slots__ = ("fn", "left")

    def __init__(self, node: JoinTable, ctx: SlotContext, max_key_groups: int, topic: str) -> None:
        super().__init__(node, ctx, max_key_groups, topic, table_join_states(node)[0])
        self.fn = node.fn
        self.left = node.how == "left"

    def _joined(self, key: Any, value: Any, row: Any, t: int) -> Element | None:
        if row is None and not self.left:
            return None
        if self.fn is not None:
            out = self.fn(value, row)
        else:
            text = key.decode(errors="replace") if isinstance(key, bytes) else key
            out = {"key": text, "value": value, "table": row}
        return (key, out, t, -1)

    def process(self, batch: Batch) -> None:
        p = batch.partition
        wm = max(self.timers.watermark, self.timers.reached_watermark(p))  # lateness per partition
        buffer, state, register = self.buffer, self.state, self.timers.register
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
                    value = buffer.get(state, skey) or {"k": k, "v": [], "s": []}
                    if side == STREAM and t <= wm:  # late: joined now, nothing to keep
                        late += 1
                        joined = self._joined(k, v, as_of(value["v"], t), t)
                        if joined is not None:
                            out.append(joined)
                        continue
                    if side == TABLE:
                        versions = value["v"]
                        versions.insert(bisect_right(versions, t, key=_time), [t, v])
                        prune(versions, wm)
                    else:
                        value["s"].append([t, o, v])
                    if value["v"] or value["s"]:
                        put(skey, value)  # raises UnstorableState: nothing changed
                    else:
                        buffer.delete(state, skey)
                    if side == TABLE and t <= wm:
                        late += 1
                    else:  # a waiting record's time; a version's, after which older go
                        register(EVENT, t, skey)
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
        times = {s[0] for s in value["s"]} | {v[0] for v in value["v"] if v[0] > NO_TIME}
        return [(EVENT, t) for t in times]

    def _fire(self, domain: str, time: int, skey: bytes, fired: dict[int, list[Element]]) -> None:
        value = self.buffer.get(self.state, skey)
        if not value:
            return
        wm = self.timers.watermark
        p = partition_of(skey)
        waiting = value["s"]
        ready = sorted((s for s in waiting if s[0] <= wm), key=lambda s: (s[0], s[1]))
        if ready:
            value["s"] = [s for s in waiting if s[0] > wm]
            out = fired.setdefault(p, [])
            key = value["k"]
            for t, o, v in ready:
                try:
                    joined = self._joined(key, v, as_of(value["v"], t), t)
                except Exception as exc:
                    self.ctx.fail(
                        self.name, "function", Batch(self.topic, p, []), (key, v, t, o), exc
                    )
                    continue
                if joined is not None:
                    out.append(joined)
        prune(value["v"], wm)
        if value["v"] or value["s"]:  # fewer records and versions: no larger than stored
            self.buffer.put(self.state, skey, value)
        else:
            self.buffer.delete(self.state, skey)
