"""The worker's event-time clock: per-partition watermarks, idleness, the minimum.

Rules (Flink's, per input partition; `WatermarkTracker.advance` applies them in
this order every tick):

1. A partition's watermark is the largest event time seen in it minus its
   source's ``max_out_of_orderness``, and never below the watermark it had
   reached before a restart (kept in the event-time operators' state).
2. A partition still restoring its state holds the worker's watermark where it
   is: its backlog is unread and its timers are not rebuilt yet.
3. A partition is idle when nothing new came for its source's ``idle_timeout``
   (counted from its last record, or from when it was assigned or its restore
   ended) *and* everything it holds has been read — a partition with a backlog
   is never idle, however long since its last record was processed. Idle
   partitions do not hold the watermark back.
4. The worker's watermark is the minimum over the partitions left.
5. With every partition idle it advances with the wall clock from where it
   was, so the last windows close. If it was never set (every partition went
   idle before all had shown a record, or right after a restart), it first
   starts from the lowest watermark any partition has reached — from records
   seen, or kept in state from before the restart; empty partitions do not count.
6. It never goes back.

The tracker owns only these rules and their clocks. What a partition has shown
(largest event time, when last seen, restored watermark, whether it is caught
up) comes from a `PartitionProgress`, so the rules are tested without slots or
a broker.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaException, TopicPartition

from weir.operators.physical import PhysicalPlan
from weir.operators.timers import NO_TIME

TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True)
class SourceClock:
    """What a source declares about its event time."""

    out_of_orderness_ms: int
    idle_timeout_s: float | None


class PartitionProgress(Protocol):
    """What the runtime has seen of a partition."""

    def max_timestamp(self, tp: TopicPartitionKey) -> int | None:
        """The largest event time processed from ``tp``; None if none yet."""

    def last_seen(self, tp: TopicPartitionKey) -> float | None:
        """When (monotonic seconds) a record of ``tp`` was last processed."""

    def caught_up(self, tp: TopicPartitionKey) -> bool:
        """Has everything ``tp`` holds been read?"""

    def restored_watermark(self, tp: TopicPartitionKey) -> int:
        """The watermark ``tp`` had reached before a restart (NO_TIME if none)."""


class WatermarkTracker:
    """Computes the worker's watermark from its partitions (rules in the module doc)."""

    def __init__(self, sources: dict[str, SourceClock]) -> None:
        self.sources = sources
        self.watermark = NO_TIME
        self._active_since: dict[TopicPartitionKey, float] = {}
        self._all_idle: tuple[float, int] | None = None  # since when, from which watermark

    @classmethod
    def for_plan(cls, plan: PhysicalPlan) -> WatermarkTracker:
        """A tracker of the plan's sources that feed event-time operators."""
        return cls(
            {
                src.topic: SourceClock(round(src.max_out_of_orderness * 1000), src.idle_timeout)
                for src in plan.event_time_sources
            }
        )

    def __bool__(self) -> bool:
        return bool(self.sources)

    def rewind(self) -> None:
        """After a rollback: forget the watermark the aborted epoch reached. The next
        tick starts again from what the last committed checkpoint recorded (the
        operators' restored watermarks, rule 1), so replayed records are not late
        because the aborted epoch had moved time on (the one exception to rule 6)."""
        self.watermark = NO_TIME
        self._all_idle = None

    def activate(self, tp: TopicPartitionKey, now: float) -> None:
        """``tp`` starts counting towards idleness now (assigned, or its restore ended)."""
        self._active_since[tp] = now

    def forget(self, tp: TopicPartitionKey) -> None:
        self._active_since.pop(tp, None)

    def advance(
        self,
        now: float,
        partitions: Iterable[TopicPartitionKey],
        restoring: Collection[TopicPartitionKey],
        progress: PartitionProgress,
    ) -> bool:
        """Apply the rules at monotonic time ``now``; True if the watermark moved."""
        owned = [tp for tp in partitions if tp[0] in self.sources]
        candidates = [
            wm
            for tp in owned
            if (wm := self._partition_watermark(tp, now, restoring, progress)) is not None
        ]
        if candidates:  # Rule 4
            new = min(candidates)
            self._all_idle = None
        elif owned and self.watermark == NO_TIME:  # Rule 5, no watermark yet
            reached = [r for tp in owned if (r := self._reached(tp, progress)) > NO_TIME]
            new = min(reached, default=NO_TIME)
        elif owned:  # Rule 5: all idle
            if self._all_idle is None:
                self._all_idle = (now, self.watermark)
            since, base = self._all_idle
            new = base + round((now - since) * 1000)
        else:
            new = self.watermark
        if new > self.watermark:  # Rule 6
            self.watermark = new
            return True
        return False

    def _partition_watermark(
        self,
        tp: TopicPartitionKey,
        now: float,
        restoring: Collection[TopicPartitionKey],
        progress: PartitionProgress,
    ) -> int | None:
        """Rules 1-3 for one partition: its watermark, or None if it is idle."""
        if tp in restoring:  # Rule 2
            return NO_TIME
        clock = self.sources[tp[0]]
        seen = progress.last_seen(tp)
        since = self._active_since.get(tp, now)
        last = since if seen is None else max(seen, since)
        idle = clock.idle_timeout_s
        if idle is not None and now - last > idle and progress.caught_up(tp):  # Rule 3
            return None
        return self._reached(tp, progress)

    def _reached(self, tp: TopicPartitionKey, progress: PartitionProgress) -> int:
        """Rule 1: from the records seen, never below the watermark restored from state."""
        stamp = progress.max_timestamp(tp)
        seen = NO_TIME if stamp is None else stamp - self.sources[tp[0]].out_of_orderness_ms
        return max(seen, progress.restored_watermark(tp))


class SlotProgress:
    """`PartitionProgress` of a running worker: what its slots processed, what its
    consumers read, and the watermarks its event-time operators restored."""

    def __init__(self, slots: Iterable[Any], consumer: Any, router: Any, committed: Any) -> None:
        self.slots = slots
        self.consumer = consumer
        self.router = router
        self.committed = committed  # () -> {partition: committed offset}

    def max_timestamp(self, tp: TopicPartitionKey) -> int | None:
        stamps = [s.max_ts[tp] for s in self.slots if tp in s.max_ts]
        return max(stamps) if stamps else None

    def last_seen(self, tp: TopicPartitionKey) -> float | None:
        seen = [s.last_seen[tp] for s in self.slots if tp in s.last_seen]
        return max(seen) if seen else None

    def caught_up(self, tp: TopicPartitionKey) -> bool:
        """The consumer's position steps over transaction markers and aborted records
        (which never reach the router), so on a transactional topic — repartition
        topics, other exactly-once jobs' output — it reaches the end past the last
        commit marker; ``high`` is the last stable offset (read_committed)."""
        try:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
            consumed = self.consumer.position(TopicPartition(*tp))
        except KafkaException:
            return False
        if high < 0:
            return True  # nothing fetched yet from an empty partition
        routed = self.router.positions.get(tp, self.committed().get(tp, 0))
        return max(routed, consumed) >= high

    def restored_watermark(self, tp: TopicPartitionKey) -> int:
        floors = [
            op.restored_watermark(tp[1])
            for slot in self.slots
            if slot.chain is not None
            for op in slot.chain.windows
            if op.topic == tp[0]
        ]
        return max(floors, default=NO_TIME)
