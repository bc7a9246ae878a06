"""The worker's slot threads as one group: start, stop, and messages to all.

Slots are started fresh at start and after every rollback (so nothing of an
aborted epoch survives in them) and are told, by message through their inboxes,
what keyed state they own and where time is — never by touching their fields
from the fetcher thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from weir.operators.chain import Batch
from weir.operators.physical import PhysicalPlan
from weir.service.changelog import Changelogs
from weir.service.metrics import Metrics
from weir.service.router import PINNED, SlotRouter
from weir.service.slots import FETCHER, SOURCES, Ownership, Slot, Stop, Watermark
from weir.service.topics import TopicLimits
from weir.state.epoch import EpochBuffer
from weir.state.keygroups import key_group_range
from weir.state.serde import JsonSerde
from weir.state.store import StateStore, Write

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]
SAMPLE_EVERY = 16  # a large batch's bytes are estimated from every 16th record


class SlotPool:
    """Starts, stops and addresses the slot threads of one worker process."""

    def __init__(
        self,
        plan: PhysicalPlan,
        count: int,
        metrics: Metrics,
        changelogs: Changelogs,
        on_fatal: Callable[[BaseException], None],
        registry: Mapping[str, str] | None = None,
    ) -> None:
        self.plan = plan
        self.registry = registry  # schema registry client settings, for the job's serdes
        self.count = count
        self.metrics = metrics
        self.changelogs = changelogs
        self.on_fatal = on_fatal
        self.slots: list[Slot] = []

    def __iter__(self) -> Iterator[Slot]:
        return iter(self.slots)

    def __len__(self) -> int:
        return len(self.slots)

    def start(
        self,
        producer: Any,
        on_ack: Callable[[int, int, list[Write]], None],
        store: StateStore | None,
        limits: dict[str, TopicLimits],
        partition_counts: dict[str, int] | None = None,
    ) -> None:
        """Fresh slots producing on ``producer``, each with its own epoch buffer;
        ``partition_counts`` of the topics the job reads (broadcast sides write to
        every partition of their operator's topic)."""
        serdes = {s: JsonSerde() for s in self.changelogs.states}
        record_limits = self.changelogs.record_limits(limits)
        slots: list[Slot] = []
        shared: dict[str, Any] = {}  # what operators combine over all slots (side clocks)
        for i in range(self.count):
            slots.append(
                Slot(
                    i,
                    slots,
                    self.plan.roots,
                    self.plan.max_key_groups,
                    producer,
                    self.plan.on_error,
                    self.plan.dlq_topic,
                    self.metrics,
                    on_ack,
                    self.on_fatal,
                    state=None if store is None else EpochBuffer(store, serdes, record_limits),
                    changelogs=self.changelogs,
                    limits=limits,
                    registry=self.registry,
                    shared=shared,
                    partition_counts=partition_counts,
                )
            )
        self.slots = slots
        for slot in slots:
            slot.start()

    def set_record_limits(self, limits: dict[str, TopicLimits]) -> None:
        """A changelog topic's limit changed: every slot's epoch buffer refuses by the
        new one from its next write on."""
        record_limits = self.changelogs.record_limits(limits)
        for slot in self.slots:
            if slot.state is not None:
                slot.state.set_limits(record_limits)

    def stop(self, timeout: float) -> None:
        """Stop every slot; what they still hold is discarded (a rollback follows, or
        the last checkpoint has committed it)."""
        for slot in self.slots:
            slot.discard = True
            slot.inbox.stop(Stop())
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            slot.join(max(0.0, deadline - time.monotonic()))
            if slot.is_alive():
                log.warning("slot %d did not stop within %.0fs; abandoning it", slot.slot, timeout)

    def dispatch(self, per_slot: list[list[Batch]]) -> None:
        """Hand each slot its routed batches (one inbox hand-off per batch), with their
        records and bytes counted for flow control."""
        for slot, batches in zip(self.slots, per_slot, strict=True):
            for batch in batches:
                elems = batch.elems
                records = len(elems)
                sample = elems if records <= 4 * SAMPLE_EVERY else elems[::SAMPLE_EVERY]
                size = sum(map(len, sample)) * records // len(sample)  # value bytes, in C
                slot.record_bytes = size // records
                slot.inbox.put(SOURCES, FETCHER, batch, records, size)

    def broadcast(self, item: Any) -> None:
        for slot in self.slots:
            slot.inbox.put(SOURCES, FETCHER, item)

    def tick(self, watermarks: dict[str, int]) -> None:
        """Time moved (or merely passed: processing-time timers need the clock too):
        each input topic's watermark, a copy every slot reads."""
        self.broadcast(Watermark(dict(watermarks), int(time.time() * 1000)))

    def assign_ownership(
        self, router: SlotRouter, restoring: Collection[TopicPartitionKey]
    ) -> None:
        """Tell every slot which keyed state it owns, so its timers are rebuilt from
        it: pinned partitions, or every partition and a key-group range when slots
        share partitions. Partitions still restoring are owned by none yet."""
        ready = [tp for tp in router.pins if tp not in restoring]
        n = len(self.slots)
        for slot in self.slots:
            parts: dict[str, set[int]] = {}
            if router.mode == PINNED:
                mine = [tp for tp in ready if router.pins[tp] == slot.slot]
                groups = None
            else:
                mine = ready
                groups = key_group_range(slot.slot, n, self.plan.max_key_groups)
            for topic, p in mine:
                parts.setdefault(topic, set()).add(p)
            slot.inbox.put(SOURCES, FETCHER, Ownership(parts, groups))
