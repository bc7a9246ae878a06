"""Flow control between the fetcher and the slots: queue bounds, pause and resume.

Every fetch loop iteration, `FlowControl.update`:

1. Sizes each slot's queue bound: ``slot_queue_records``, or less for a slow
   slot, so a barrier never waits more than ``QUEUE_TARGET_S`` behind its queue
   (checkpoints keep completing well within the transaction timeout). Until a
   slot's first records show its cost, the bound is ``PROBE_QUEUE``. Bytes are
   bounded too: ``slot_queue_bytes`` per slot, counting its inbox (records from
   the fetcher and from other slots' exchanges) and the outputs it holds for the
   next commit, so large records or a hot key behind an exchange cannot grow
   the process without bound.
2. Marks a slot *full* when its queue exceeds either bound, until it drains to
   half of both, and adds the time since the last update to the seconds it has
   been full (``full_s``: the partitions feeding it were held back that long).
3. When every slot is full, holds off consuming (librdkafka's bounded prefetch
   queue keeps memory bounded) rather than pausing, since a pause throws away
   what was prefetched for those partitions — for at most ``HOLD_MAX_S``.
4. Otherwise pauses the partitions that feed a full slot and consumes on, so
   the other slots keep working and the worker keeps its group membership
   however slow a slot is. Partitions restoring their state stay paused always.
5. Resumes every paused partition that no longer needs to be, and sets the
   next fetch size to what the least free slot can take.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Protocol

from confluent_kafka import KafkaException, TopicPartition

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]
HOLD_MAX_S = 5.0  # longest the fetcher stops consuming because every slot is full
QUEUE_TARGET_S = 0.5  # a slot's queue holds at most about this much work
PROBE_QUEUE = 64  # a slot's queue bound before its speed is known


class SlotLoad(Protocol):
    """What flow control reads of a slot."""

    slot: int

    @property
    def queued(self) -> int:
        """Records waiting in the slot's inbox."""

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in the slot's inbox plus the outputs it holds."""

    @property
    def cost(self) -> float:
        """Seconds per record (moving average); 0 until known."""


class Pausable(Protocol):
    def pause(self, tps: list[TopicPartition]) -> None: ...

    def resume(self, tps: list[TopicPartition]) -> None: ...


class FlowControl:
    """Owns which partitions are paused and how much the fetcher may take next."""

    def __init__(
        self, consumer: Pausable, queue_records: int, batch_size: int, queue_bytes: int
    ) -> None:
        self.consumer = consumer
        self.queue_records = queue_records
        self.queue_bytes = queue_bytes
        self.batch_size = batch_size
        self.paused: set[TopicPartitionKey] = set()
        self.full_slots: set[int] = set()
        self.full_s: dict[int, float] = {}  # seconds each slot has been full, ever
        self.updated: float | None = None  # when `update` last ran
        self.holding_since: float | None = None
        self.fetch_size = PROBE_QUEUE

    def queue_limit(self, cost: float) -> int:
        """Step 1: a slot's queue bound in records."""
        if cost <= 0:
            return min(self.queue_records, PROBE_QUEUE)
        return min(self.queue_records, max(1, int(QUEUE_TARGET_S / cost)))

    def update(
        self,
        slots: Sequence[SlotLoad],
        restoring: Collection[TopicPartitionKey],
        feeds: Callable[[int], Iterable[TopicPartitionKey]],
        now: float | None = None,
    ) -> bool:
        """Steps 1-5; True when the fetcher should not consume now (step 3)."""
        now = time.monotonic() if now is None else now
        room = self.batch_size
        for slot in slots:  # Steps 1-2
            high = self.queue_limit(slot.cost)
            queued, size = slot.queued, slot.queued_bytes
            over = queued > high or size > self.queue_bytes
            above_half = queued > high // 2 or size > self.queue_bytes // 2
            if over or (slot.slot in self.full_slots and above_half):
                self.full_slots.add(slot.slot)
            else:
                self.full_slots.discard(slot.slot)
                room = min(room, max(1, high - queued))
        since, self.updated = self.updated, now
        for s in self.full_slots if since is not None else ():
            self.full_s[s] = self.full_s.get(s, 0.0) + (now - since)
        hold = bool(slots) and len(self.full_slots) == len(slots)
        want = set(restoring)
        if hold and (self.holding_since is None or now - self.holding_since < HOLD_MAX_S):
            if self.holding_since is None:  # Step 3
                self.holding_since = now
        else:  # Step 4
            if not hold:
                self.holding_since = None
            hold = False
            for s in self.full_slots:
                want.update(feeds(s))
        self._set_paused(want)  # Step 5
        self.fetch_size = room
        return hold

    def _set_paused(self, want: set[TopicPartitionKey]) -> None:
        pause, resume = want - self.paused, self.paused - want
        if pause:
            log.debug("backpressure: pausing %s", sorted(pause))
            self.consumer.pause([TopicPartition(t, p) for t, p in pause])
        if resume:
            self.consumer.resume([TopicPartition(t, p) for t, p in resume])
        self.paused = want

    def pause_now(self, tps: Iterable[TopicPartitionKey]) -> None:
        """Pause ``tps`` at once (partitions whose state must be restored first)."""
        tps = set(tps) - self.paused
        if tps:
            self.consumer.pause([TopicPartition(t, p) for t, p in tps])
            self.paused |= tps

    def forget(self, tps: Iterable[TopicPartitionKey]) -> None:
        """``tps`` are leaving this worker (called while still assigned): resume the
        paused ones first — librdkafka keeps a partition paused through a revocation,
        and one assigned back later would never be fetched again."""
        leaving = self.paused & set(tps)
        if leaving:
            with contextlib.suppress(KafkaException, RuntimeError):  # the consumer is closing
                self.consumer.resume([TopicPartition(t, p) for t, p in leaving])
            self.paused -= leaving

    def reset(self, restoring: Collection[TopicPartitionKey]) -> None:
        """After a rollback: fresh slots are empty; only restoring partitions stay paused."""
        self._set_paused(set(restoring))
        self.full_slots = set()
        self.holding_since = None
