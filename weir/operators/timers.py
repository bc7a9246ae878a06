"""Timers of keyed operators: one service for windows and process functions.

A timer is ``(domain, time, storage key)``: an *event-time* timer (`EVENT`) is
due when the watermark reaches its time, a *processing-time* timer
(`PROCESSING`) when the wall clock does. `Timers` keeps them for one operator
instance in one slot (as Flink's ``InternalTimerService`` does for windows and
process functions alike), and `TimerOperator` is the base of the operators that
use it — what a slot's ``chain.windows`` holds.

Invariants:

1. **Deduplicated per key and time.** Registering ``(domain, time, key)`` that
   is already queued does nothing: a queued timer fires once.
2. **Fired in timestamp order.** `Timers.due` yields every event-time timer up
   to the watermark, then every processing-time timer up to the clock, each
   domain in timestamp order (keys of one time in no particular order). A
   timer registered while its domain fires, and already due, fires in the same
   pass.
3. **Persisted with the key, not here.** The service writes no timers: each
   operator keeps its timers in its keyed state value (a process function its
   ``"t"`` section, a window its open windows, whose ends are its timers) and
   the queue is an index over that state. The index may keep timers the state
   has since dropped or moved (deleted, rescheduled, already fired): when one
   fires, the operator checks the key's state, which alone decides.
   What the service persists is the watermark each owned partition reached,
   in the operator's ``<name>.watermark`` state under `weir.state.layout.partition_key`,
   so that the partition's watermark (`reached_watermark`) never goes back, in
   this slot or after it moves or restarts: late records stay late, no window
   fires twice, and with every input idle the runtime starts from it, so
   restored timers still fire. The operator's watermark itself (its input
   topic's) goes back when a partition behind it joins — the joining
   partition's windows must not fire early — and lateness is judged per
   partition, against what that partition reached.
4. **Rebuilt on ownership changes.** `Timers.own` is given the partitions (and,
   when slots share partitions, the key groups) the slot now owns. For each
   newly owned partition it reads the watermark the partition reached and scans
   the operator's keyed state of that partition, queueing the timers of the
   keys in those key groups (after a restore, a rebalance, a rollback).
   Partitions given up are forgotten, their reached watermark too.
5. **Stale timers are skipped.** Queued timers of a partition the slot gave up
   are dropped, not fired, when they come due; if the slot owns it again, the
   rebuild queues its timers afresh from state.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from weir.operators.chain import Batch, Element, Operator, SlotContext
from weir.operators.plan import StatefulOp
from weir.state.epoch import EpochBuffer
from weir.state.layout import key_group_of, partition_key, partition_of

NO_TIME = -(2**63)  # before any time: no watermark, no clock reading yet
# The domains, as process functions store them in their state: never change them.
EVENT = "e"
PROCESSING = "p"

DueTimes = Callable[[Any], Iterable[tuple[str, int]]]


def watermark_state(operator: str) -> str:
    """The state holding the watermark each partition of ``operator`` reached."""
    return f"{operator}.watermark"


class Timers:
    """One operator instance's timers: a queue per domain over its keyed state."""

    __slots__ = (
        "_buffer", "_due_times", "_index", "_owned", "_queues", "_reached", "_state",
        "_wm_state", "now", "watermark",
    )  # fmt: skip

    def __init__(self, buffer: EpochBuffer, state: str, operator: str, due_times: DueTimes) -> None:
        """``state`` holds the operator's keyed values; ``due_times(value)`` gives the
        ``(domain, time)`` timers a stored value holds, to rebuild the queues."""
        self._buffer = buffer
        self._state = state
        self._wm_state = watermark_state(operator)
        self._due_times = due_times
        # per domain: time -> storage keys (the dedup), and a heap of those times
        self._index: dict[str, dict[int, set[bytes]]] = {EVENT: {}, PROCESSING: {}}
        self._queues: dict[str, list[int]] = {EVENT: [], PROCESSING: []}
        self._owned: set[int] = set()
        self._reached: dict[int, int] = {}  # partition -> the highest watermark it has had
        self.watermark = NO_TIME
        self.now = NO_TIME

    def register(self, domain: str, time: int, skey: bytes) -> None:
        keys = self._index[domain].get(time)
        if keys is None:
            self._index[domain][time] = {skey}
            heapq.heappush(self._queues[domain], time)
        else:
            keys.add(skey)

    def reached_watermark(self, partition: int) -> int:
        """The highest watermark ``partition`` has had: restored from state when this
        slot came to own it, raised by every advance since; `NO_TIME` if none."""
        return self._reached.get(partition, NO_TIME)

    def advance(self, watermark: int, now: int) -> None:
        """The input's watermark is ``watermark`` (back only when a partition behind it
        joined) and the clock ``now`` (never back). Each owned partition's reached
        watermark rises with it and is written to state, to be restored with it."""
        self.watermark = watermark
        reached = self._reached
        for p in self._owned:
            if watermark > reached.get(p, NO_TIME):
                reached[p] = watermark
                self._buffer.put(self._wm_state, partition_key(p), watermark)
        if now > self.now:
            self.now = now

    def due(self) -> Iterator[tuple[str, int, bytes]]:
        """Pop the due timers as ``(domain, time, storage key)``, skipping those of
        partitions not owned. Lazy: timers registered meanwhile are seen."""
        owned = self._owned
        for domain, limit in ((EVENT, self.watermark), (PROCESSING, self.now)):
            queue, index = self._queues[domain], self._index[domain]
            while queue and queue[0] <= limit:
                time = heapq.heappop(queue)
                for skey in index.pop(time, ()):
                    if partition_of(skey) in owned:
                        yield domain, time, skey

    def own(self, partitions: set[int], key_groups: range | None) -> None:
        """Forget partitions given up; for new ones, restore the watermark they had
        reached and queue the timers of their keys in ``key_groups`` (all if None)."""
        for p in self._owned - partitions:
            self._owned.discard(p)
            self._reached.pop(p, None)
        for p in partitions - self._owned:
            self._owned.add(p)
            floor = self._buffer.get(self._wm_state, partition_key(p))
            if floor is not None:
                self._reached[p] = floor
            for skey, value in self._buffer.scan(self._state, p):
                if key_groups is None or key_group_of(skey) in key_groups:
                    for domain, time in self._due_times(value):
                        self.register(domain, time, skey)


class TimerOperator(Operator):
    """A keyed operator with timers, driven by the slot through `advance` and `own`."""

    __slots__ = ("buffer", "groups", "state", "timers", "topic")

    def __init__(
        self, node: StatefulOp, ctx: SlotContext, max_key_groups: int, topic: str, state: str
    ) -> None:
        super().__init__(node, ctx)
        self.buffer = ctx.state
        self.state = state  # the keyed values, holding the timers
        self.groups = max_key_groups
        self.topic = topic  # the source topic whose partitions the state follows
        self.timers = Timers(ctx.state, state, node.name, self._due_times)

    def _due_times(self, value: Any) -> Iterable[tuple[str, int]]:
        """The ``(domain, time)`` timers a stored value holds."""
        raise NotImplementedError

    def _fire(self, domain: str, time: int, skey: bytes, fired: dict[int, list[Element]]) -> None:
        """One due timer: check it against the key's state, act, add outputs to
        ``fired[partition]``."""
        raise NotImplementedError

    def advance(self, watermark: int, now: int) -> None:
        """Move the watermark and clock, fire what is due, emit one batch per partition."""
        self.timers.advance(watermark, now)
        fired: dict[int, list[Element]] = {}
        for domain, time, skey in self.timers.due():
            self._fire(domain, time, skey, fired)
        if self.out is not None:
            for p, out in fired.items():
                if out:
                    self.out.process(Batch(self.topic, p, out))

    def own(self, partitions: set[int], key_groups: range | None) -> None:
        """The partitions (and, when slots share partitions, the key groups) this
        slot now owns: their timers are rebuilt from state (`Timers.own`)."""
        self.timers.own(partitions, key_groups)

    def reached_watermark(self, partition: int) -> int:
        """The highest watermark ``partition`` has had, kept in state across restarts
        and moves (or `NO_TIME`): the runtime never lets the partition's go below it."""
        return self.timers.reached_watermark(partition)
