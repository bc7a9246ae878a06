"""Flow control between the fetcher and the slots: queue bounds, pause and resume.

Every fetch loop iteration, `FlowControl.update`:

1. Weighs each slot's queue: the work waiting in its inbox, per input its records
   times that input's cost per record (a slot's inputs differ in cost by orders of
   magnitude: decoding and keying before an exchange, a slow function after it),
   against ``QUEUE_TARGET_S``, so a barrier never waits much longer than that behind
   the queue (checkpoints keep completing well within the transaction timeout); an
   input whose cost is not known yet counts as ``PROBE_COST`` a record. Records are
   bounded too (``slot_queue_records``), and bytes (``slot_queue_bytes``, counting
   the inbox — records from the fetcher and from other slots' exchanges — and the
   outputs the slot holds for the next commit), so large records or a hot key behind
   an exchange cannot grow the process without bound.
2. Marks a slot *full* when its queue exceeds any bound, until it drains to half of
   all of them, and adds the time since the last update to the seconds it has been
   full (``full_s``: the partitions feeding it were held back that long).
3. When the partitions feeding the full slots are every partition the worker reads
   (every slot is full; or any is, when records cross between slots or are routed by
   key group, since then every partition feeds every slot), pausing them would stop
   all input and throw away what librdkafka prefetched — and it fetches again only
   up to a second after the resume, while the slots run dry. So instead it holds off
   consuming while a slot is over its bounds, or while every slot is full (until one
   drains to half: a one-slot job then fetches in large batches rather than topping
   its slot up — measured on Nexmark q0, topping up cost 10 to 25% of its rate in
   fetch-loop turns contending for the GIL); librdkafka's bounded prefetch queue
   keeps memory bounded. Between holds it tops the slots up — for at most
   ``HOLD_MAX_S`` of holding in a row. A top-up is at least ``1/TOP_UP`` of what
   fills the least free slot (a slot goes at most that far past its bounds, and only
   if every record lands on it), so slots hovering at their bounds are not fed one
   record at a time.
4. Otherwise (or after holding that long) pauses the partitions that feed a full
   slot and consumes on, so the other slots keep working and the worker keeps its
   group membership however slow a slot is. Partitions restoring their state stay
   paused always.
5. Resumes every paused partition that no longer needs to be, and sets the next
   fetch size to what the least free slot still fed can take: its free share of the
   bounds times the records that fill them at its ``record_cost`` (a fetched batch
   may be all one slot's, and so may all of its records' work after an exchange).
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
PROBE_QUEUE = 64  # records a slot's queue holds of an input whose cost is not known yet
PROBE_COST = QUEUE_TARGET_S / PROBE_QUEUE  # seconds per record assumed until measured
TOP_UP = 4  # between holds, fetch at least 1/TOP_UP of what fills the least free slot


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
    def backlog(self) -> list[tuple[int, float]]:
        """Per input with records waiting: (records, seconds per record; 0 if unknown)."""

    @property
    def record_cost(self) -> float:
        """Seconds of the slot's work one fetched record may cause; 0 until known."""


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

    def capacity(self, record_cost: float) -> int:
        """Records that fill a slot's bounds at ``record_cost`` seconds each (step 5)."""
        return min(self.queue_records, max(1, int(QUEUE_TARGET_S / (record_cost or PROBE_COST))))

    def load(self, slot: SlotLoad) -> float:
        """Step 1: how full a slot's queue is, as a share of its tightest bound."""
        work = sum(n * (cost or PROBE_COST) for n, cost in slot.backlog)
        return max(
            work / QUEUE_TARGET_S,
            slot.queued / self.queue_records,
            slot.queued_bytes / self.queue_bytes,
        )

    def update(
        self,
        slots: Sequence[SlotLoad],
        restoring: Collection[TopicPartitionKey],
        feeds: Callable[[int], Iterable[TopicPartitionKey]],
        now: float | None = None,
    ) -> bool:
        """Steps 1-5; True when the fetcher should not consume now (step 3)."""
        now = time.monotonic() if now is None else now
        loads = [(slot, self.load(slot)) for slot in slots]  # Step 1
        for slot, load in loads:  # Step 2
            if load > 1.0 or (slot.slot in self.full_slots and load > 0.5):
                self.full_slots.add(slot.slot)
            else:
                self.full_slots.discard(slot.slot)
        since, self.updated = self.updated, now
        for s in self.full_slots if since is not None else ():
            self.full_s[s] = self.full_s.get(s, 0.0) + (now - since)
        want = set(restoring)
        fed = {tp for s in self.full_slots for tp in feeds(s)}
        shared = bool(fed) and fed >= {tp for s in slots for tp in feeds(s.slot)} - want
        everyone = len(self.full_slots) == len(slots)  # full until drained to half
        hold = shared and (everyone or any(load > 1.0 for _, load in loads))
        if hold and (self.holding_since is None or now - self.holding_since < HOLD_MAX_S):
            if self.holding_since is None:  # Step 3
                self.holding_since = now
        else:  # Step 4
            if not hold:
                self.holding_since = None
            if hold or not shared:
                want |= fed
            hold = False
        self._set_paused(want)  # Step 5
        room = self.batch_size
        for slot, load in loads:
            if shared or slot.slot not in self.full_slots:  # else its partitions are paused
                capacity = self.capacity(slot.record_cost)
                free = int((1.0 - load) * capacity + 1e-9)  # 1e-9: float rounding
                least = capacity // TOP_UP if shared else 1
                room = min(room, max(1, least, free))
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
