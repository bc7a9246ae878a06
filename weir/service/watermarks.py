"""The worker's event-time clocks: per-partition watermarks, idleness, the minimum.

Every topic the job reads whose watermark is needed (`PhysicalPlan.event_time_sources`)
has its own watermark, as in Flink an operator's watermark is the minimum over its own
inputs: timers behind a topic advance with that topic's watermark. Rules (Flink's,
per input partition; `WatermarkTracker.advance` applies them in this order every
tick, topic by topic):

1. A source partition's watermark is the largest event time seen in it minus its
   source's ``max_out_of_orderness``. A repartition partition's is what the
   workers writing into it announced: the minimum over the upstream partitions
   not idle, an upstream partition that announced nothing holding it
   (`weir.service.repartition_watermarks`). Neither is ever below the highest
   watermark the partition has had, here or on a worker that owned it before
   (kept in the event-time operators' state).
2. A partition still restoring its state holds its topic's watermark where it is:
   its backlog is unread and its timers are not rebuilt yet.
3. A partition is idle when it holds nothing unread *and* nothing new is coming:
   a source partition when nothing new came for its source's ``idle_timeout``
   (counted from its last record, or from when it was assigned or its restore
   ended) — a partition with a backlog is never idle, however long since its
   last record was processed; a repartition partition when every upstream
   partition announced that it is idle (its own silence says nothing: a
   restarting writer is silent too). Idle partitions do not hold the watermark back.
4. A topic's watermark is the minimum over its partitions left.
5. When every partition of a topic is idle, nothing more is coming from any of
   them: its watermark goes to the highest any of them has reached — from records
   seen or announced, or kept in state from before a restart; empty partitions do
   not count — as Flink's valve flushes the largest watermark across its channels
   when the last one goes idle; then it advances with the wall clock from there,
   so the last windows close. (A repartition partition whose upstream partitions
   are all idle has reached the highest of their watermarks, for the same reason.)
6. It never goes back — except when a partition joins the topic here (assigned, or
   its restore ended): then it is the minimum again, even if that is lower. A
   partition behind the others (its new owner must catch up on it) must not find
   its windows fired early and its records late; the operators judge lateness per
   partition, against the watermark that partition reached (rule 1), so nothing
   that was late becomes on time.

`WatermarkTracker.watermark`, the lowest over the topics of the partitions owned, is
what /status and ``weir_watermark_lag_seconds`` show. `WatermarkTracker.announcements`
gives the rules' verdict on single partitions, which the worker announces into the
repartition topics they write (rules 1 and 3 there, and the same never-back floor).

The tracker owns only these rules and their clocks. What a partition has shown
(largest event time, when last seen, what its upstream announced, restored
watermark, whether it is caught up) comes from a `PartitionProgress`, so the rules
are tested without slots or a broker.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaException, TopicPartition

from weir.operators.physical import PhysicalPlan
from weir.operators.plan import MergedSource, RepartitionSource
from weir.operators.timers import NO_TIME
from weir.service.repartition_watermarks import Announced

TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True)
class SourceClock:
    """What a source declares about its event time; ``announced``: a repartition
    topic, whose watermark is what its upstream writers announce."""

    out_of_orderness_ms: int
    idle_timeout_s: float | None
    announced: bool = False


class Upstream(Protocol):
    """What the upstream partitions announced into a repartition partition."""

    def watermark(self) -> int | None:
        """The minimum over those not idle; None if all are idle."""

    def reached(self) -> int:
        """The lowest watermark any of them announced (NO_TIME if none)."""

    def flushed(self) -> int:
        """The highest watermark any of them announced (NO_TIME if none)."""


class PartitionProgress(Protocol):
    """What the runtime has seen of a partition."""

    def max_timestamp(self, tp: TopicPartitionKey) -> int | None:
        """The largest event time processed from ``tp``; None if none yet."""

    def last_seen(self, tp: TopicPartitionKey) -> float | None:
        """When (monotonic seconds) a record of ``tp`` was last processed."""

    def caught_up(self, tp: TopicPartitionKey) -> bool:
        """Has everything ``tp`` holds been read?"""

    def reached_watermark(self, tp: TopicPartitionKey) -> int:
        """The watermark ``tp`` had reached before a restart (NO_TIME if none)."""

    def announced(self, tp: TopicPartitionKey) -> Upstream | None:
        """For a repartition partition, what its upstream announced (None: unknown)."""


class WatermarkTracker:
    """Computes each topic's watermark from its partitions (rules in the module doc)."""

    def __init__(self, sources: dict[str, SourceClock]) -> None:
        self.sources = sources
        self.watermarks: dict[str, int] = {}  # per topic; absent: NO_TIME
        self.watermark = NO_TIME
        self._active_since: dict[TopicPartitionKey, float] = {}
        self._all_idle: dict[str, tuple[float, int]] = {}  # topic -> since when, from which
        self._joined: set[str] = set()  # topics a partition joined since the last tick

    @classmethod
    def for_plan(cls, plan: PhysicalPlan) -> WatermarkTracker:
        """A tracker of the plan's sources whose watermark is needed: a repartition
        topic's is announced; a multi-input operator's topic reports its sides'
        (`weir.operators.sides`) as its records' time."""
        return cls(
            {
                src.topic: SourceClock(0, None, announced=True)
                if isinstance(src, RepartitionSource) and not isinstance(src, MergedSource)
                else SourceClock(round(src.max_out_of_orderness * 1000), src.idle_timeout)
                for src in plan.event_time_sources
            }
        )

    def __bool__(self) -> bool:
        return bool(self.sources)

    def rewind(self) -> None:
        """After a rollback: forget the watermarks the aborted epoch reached. The next
        tick starts again from what the last committed checkpoint recorded (the
        operators' restored watermarks, rule 1), so replayed records are not late
        because the aborted epoch had moved time on (the one exception to rule 6)."""
        self.watermarks = {}
        self.watermark = NO_TIME
        self._all_idle = {}

    def activate(self, tp: TopicPartitionKey, now: float) -> None:
        """``tp`` joins its topic now (assigned, or its restore ended): its idleness
        counts from now, and the topic's watermark may go back to it (rule 6)."""
        self._active_since[tp] = now
        self._joined.add(tp[0])

    def forget(self, tp: TopicPartitionKey) -> None:
        self._active_since.pop(tp, None)

    def advance(
        self,
        now: float,
        partitions: Iterable[TopicPartitionKey],
        restoring: Collection[TopicPartitionKey],
        progress: PartitionProgress,
    ) -> bool:
        """Apply the rules at monotonic time ``now``; True if a watermark moved."""
        topics: dict[str, list[TopicPartitionKey]] = {}
        for tp in partitions:
            if tp[0] in self.sources:
                topics.setdefault(tp[0], []).append(tp)
        moved = False
        for topic, owned in topics.items():
            moved |= self._advance(topic, owned, now, restoring, progress)
        if topics:
            self.watermark = min(self.watermarks.get(t, NO_TIME) for t in topics)
        return moved

    def _advance(
        self,
        topic: str,
        owned: list[TopicPartitionKey],
        now: float,
        restoring: Collection[TopicPartitionKey],
        progress: PartitionProgress,
    ) -> bool:
        if any(tp in restoring for tp in owned):  # Rule 2
            return False
        current = self.watermarks.get(topic, NO_TIME)
        joined = topic in self._joined
        if joined:  # Rule 6's exception: the minimum again, and a new idle run
            self._joined.discard(topic)
            self._all_idle.pop(topic, None)
        states = [self._partition(tp, now, restoring, progress) for tp in owned]
        candidates = [wm for wm, idle in states if not idle]
        if candidates:  # Rule 4
            new = min(candidates)
            self._all_idle.pop(topic, None)
        else:  # Rule 5: all idle, flush the highest reached, then the wall clock
            run = self._all_idle.get(topic)
            if run is None:
                base = max(current, *(wm for wm, _ in states))
                if base == NO_TIME:  # nothing reached yet: ask again next tick
                    if joined and current != NO_TIME:
                        self.watermarks.pop(topic, None)
                        return True
                    return False
                run = self._all_idle[topic] = (now, base)
            since, base = run
            new = base + round((now - since) * 1000)
        if new > current or (joined and new != current):  # Rule 6
            self.watermarks[topic] = new
            return True
        return False

    def announcements(
        self,
        now: float,
        partitions: Iterable[TopicPartitionKey],
        restoring: Collection[TopicPartitionKey],
        progress: PartitionProgress,
    ) -> dict[TopicPartitionKey, Announced]:
        """Each owned partition's watermark and idleness by rules 1-3 (restoring ones
        have nothing to say), for the repartition topics it writes into."""
        return {
            tp: Announced(*self._partition(tp, now, restoring, progress))
            for tp in partitions
            if tp[0] in self.sources and tp not in restoring
        }

    def _partition(
        self,
        tp: TopicPartitionKey,
        now: float,
        restoring: Collection[TopicPartitionKey],
        progress: PartitionProgress,
    ) -> tuple[int, bool]:
        """Rules 1-3 for one partition: (its watermark, whether it is idle)."""
        if tp in restoring:  # Rule 2
            return NO_TIME, False
        clock = self.sources[tp[0]]
        if clock.announced:
            upstream = progress.announced(tp)
            active = NO_TIME if upstream is None else upstream.watermark()
            if active is None:  # every upstream partition idle
                if progress.caught_up(tp):  # Rule 3, and rule 5's flush
                    return max(upstream.flushed(), progress.reached_watermark(tp)), True
                active = upstream.reached()
            return max(active, progress.reached_watermark(tp)), False
        seen = progress.last_seen(tp)
        since = self._active_since.get(tp, now)
        last = since if seen is None else max(seen, since)
        idle = clock.idle_timeout_s
        if idle is not None and now - last > idle and progress.caught_up(tp):  # Rule 3
            return self._reached(tp, progress), True
        return self._reached(tp, progress), False

    def _reached(self, tp: TopicPartitionKey, progress: PartitionProgress) -> int:
        """Rule 1 for a source partition: from the records seen, never below the
        restored one."""
        stamp = progress.max_timestamp(tp)
        seen = NO_TIME if stamp is None else stamp - self.sources[tp[0]].out_of_orderness_ms
        return max(seen, progress.reached_watermark(tp))


class SlotProgress:
    """`PartitionProgress` of a running worker: what its slots processed, what its
    consumers read, what upstream writers announced, and the watermarks its
    event-time operators restored."""

    def __init__(
        self,
        slots: Iterable[Any],
        consumer: Any,
        router: Any,
        committed: Any,
        channels: Any,
        paused: Any,
    ) -> None:
        self.slots = slots
        self.consumer = consumer
        self.router = router
        self.committed = committed  # () -> {partition: committed offset}
        self.channels = channels  # WatermarkChannels
        self.paused = paused  # () -> the partitions flow control holds paused

    def announced(self, tp: TopicPartitionKey) -> Upstream | None:
        return self.channels.table(tp)

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
        commit marker; ``high`` is the last stable offset (read_committed), as of the
        last fetch response. So a paused partition is never caught up: no fetch tells
        its end, which moves on meanwhile (one paused by backpressure looked read to an
        old end, went idle, and its later records were late). Before the first fetch
        response ``high`` is unknown: a partition just assigned is not caught up either;
        one fetch tells, even for an empty one. And records read but still queued for
        the slots are not processed: a partition is caught up only once its slots have
        taken every record routed to them (read to the end under a slow window, it
        looked idle while its records waited, and they were late downstream)."""
        if tp in self.paused():
            return False
        try:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
            consumed = self.consumer.position(TopicPartition(*tp))
        except (KafkaException, RuntimeError):  # RuntimeError: its consumer is closing
            return False
        if high < 0:
            return False
        routed = self.router.positions.get(tp, self.committed().get(tp, 0))
        if max(routed, consumed) < high:
            return False
        waiting = self.router.routed.get(tp, 0)
        return sum(s.taken.get(tp, 0) for s in self.slots) >= waiting

    def reached_watermark(self, tp: TopicPartitionKey) -> int:
        floors = [
            op.reached_watermark(tp[1])
            for slot in self.slots
            if slot.chain is not None
            for op in slot.chain.windows
            if op.topic == tp[0]
        ]
        return max(floors, default=NO_TIME)
