"""Which slot processes which record: the partition → slot assignment.

Recomputed on every change of the worker's partitions (`SlotRouter.reassign`):

* partitions >= slots ("pinned"): each partition is pinned to one slot,
  balanced by count and sticky — a partition that stays on this worker stays
  on its slot, new partitions go to the least loaded slots;
* partitions < slots ("key groups"): records are spread by the key group of
  their Kafka key (`weir.state.keygroups`), so every slot works and a key always
  lands on the same slot; a partition's keyless records all go to one slot (by the
  partition), in order — a later ``key_by(fn)`` or a broadcast side depends on
  their order, which slots running side by side would not keep (rules written to a
  broadcast operator's topic out of order changed which rule ended up in force);
  ``rebalance()`` spreads records when order does not matter. On the topics of
  operators with a broadcast side (``everywhere``) a keyless record goes to every
  slot: there it is a broadcast one, which every slot's share of the partition
  must see.

Either way, records of one key, and a partition's keyless records, stay in
partition order. The router also keeps
the next offset to read per partition (the positions a checkpoint commits), and
takes the watermark control records out of repartition topics that carry them
(`weir.service.repartition_watermarks`): no slot ever sees one.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable
from operator import methodcaller
from typing import Any

from weir.operators.chain import Batch
from weir.service.repartition_watermarks import HEADER
from weir.state.keygroups import key_group, slot_table

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
PINNED = "pinned"
KEY_GROUPS = "key-groups"
_HEADERS = methodcaller("headers")  # data records in repartition topics rarely have any
Control = list[tuple[TopicPartition, bytes]]  # control records: (partition, value), in order


def _is_control(message: Any) -> bool:
    """A watermark control record (`weir.service.repartition_watermarks`), not a data
    record carrying its source's headers."""
    headers = message.headers()
    return headers is not None and any(name == HEADER for name, _ in headers)


class SlotRouter:
    """Splits consumed messages into per-slot batches and tracks read positions."""

    def __init__(
        self,
        slots: int,
        max_key_groups: int,
        exchanges: bool = False,
        everywhere: frozenset[str] = frozenset(),
        control_topics: Iterable[str] = (),
    ) -> None:
        self.slots = slots
        self.control_topics = frozenset(control_topics)
        self.exchanges = exchanges  # records move between slots after the fetcher
        self.everywhere = everywhere  # topics whose keyless records every slot gets
        self.max_key_groups = max_key_groups
        self.table = slot_table(slots, max_key_groups)
        self.pins: dict[TopicPartition, int] = {}
        self.mode = PINNED
        self.positions: dict[TopicPartition, int] = {}
        self.routed: dict[TopicPartition, int] = {}  # records handed to the slots, per partition
        self.first_timestamps: list[int] = []  # one per routed batch, for latency

    @property
    def partitions(self) -> list[TopicPartition]:
        return sorted(self.pins)

    def plan(self, partitions: Iterable[TopicPartition]) -> tuple[str, dict[TopicPartition, int]]:
        """The mode and pins for a new partition set, preferring current pins."""
        wanted = sorted(set(partitions))
        if len(wanted) < self.slots:
            return KEY_GROUPS, {tp: -1 for tp in wanted}
        keep = {tp: s for tp, s in self.pins.items() if tp in set(wanted) and s >= 0}
        load = [0] * self.slots
        for s in keep.values():
            load[s] += 1
        # Even out slots emptied by revocations; only partitions over the target move.
        target_max = -(-len(wanted) // self.slots)
        for tp in sorted(keep, reverse=True):
            s = keep[tp]
            if load[s] > target_max:
                load[s] -= 1
                del keep[tp]
        for tp in wanted:
            if tp not in keep:
                s = min(range(self.slots), key=lambda i: (load[i], i))
                keep[tp] = s
                load[s] += 1
        return PINNED, keep

    def moves(self, partitions: Iterable[TopicPartition]) -> bool:
        """Would routing ``partitions`` move a partition this worker already routes?"""
        mode, pins = self.plan(partitions)
        if mode != self.mode:
            return bool(set(pins) & set(self.pins))
        return any(pins.get(tp, s) != s for tp, s in self.pins.items())

    def reassign(self, partitions: Iterable[TopicPartition]) -> None:
        """Adopt a new partition set. Callers drain the slots first if `moves` says so."""
        self.mode, self.pins = self.plan(partitions)
        self.positions = {tp: off for tp, off in self.positions.items() if tp in self.pins}
        log.debug("slot routing: mode=%s pins=%s", self.mode, self.pins)

    def reset_positions(self) -> None:
        self.positions = {}
        self.routed = {}  # the slots start afresh with them
        self.first_timestamps = []

    def slot_partitions(self) -> list[list[str]]:
        """Per slot, what it owns, for /status: partitions or key-group ranges."""
        owned: list[list[str]] = [[] for _ in range(self.slots)]
        if self.mode == PINNED:
            for (topic, p), s in sorted(self.pins.items()):
                owned[s].append(f"{topic}-{p}")
        else:
            for s in range(self.slots):
                groups = [g for g, owner in enumerate(self.table) if owner == s]
                if groups:
                    owned[s].append(f"key-groups {groups[0]}-{groups[-1]}")
        return owned

    def feeds(self, slot: int) -> list[TopicPartition]:
        """The partitions whose records can reach ``slot``: from the fetcher directly or,
        when the job exchanges records between slots, through any other slot (a hot
        key behind an exchange fills one slot from every partition)."""
        if self.mode == KEY_GROUPS or self.exchanges:
            return list(self.pins)
        return [tp for tp, s in self.pins.items() if s == slot]

    def route(
        self, msgs: list[Any]
    ) -> tuple[list[list[Batch]], dict[TopicPartition, int], Control]:
        """Per slot, the batches to hand it; per partition, how many records came; and
        the control records among them, in order."""
        groups: dict[TopicPartition, list[Any]] = {}
        for m in msgs:
            tp = (m.topic(), m.partition())
            group = groups.get(tp)
            if group is None:
                groups[tp] = [m]
            else:
                group.append(m)
        out: list[list[Batch]] = [[] for _ in range(self.slots)]
        counts: dict[TopicPartition, int] = {}
        control: Control = []
        for tp, group in groups.items():
            if tp not in self.pins:
                log.debug("dropping %d records of unassigned partition %s", len(group), tp)
                continue
            self.positions[tp] = group[-1].offset() + 1
            if tp[0] in self.control_topics and any(map(_HEADERS, group)):
                data = []
                for m in group:
                    if _is_control(m):
                        control.append((tp, m.value()))
                    else:
                        data.append(m)
                group = data
                if not group:
                    continue
            counts[tp] = len(group)
            self.routed[tp] = self.routed.get(tp, 0) + len(group)
            self.first_timestamps.append(group[0].timestamp()[1])
            if self.mode == PINNED:
                out[self.pins[tp]].append(Batch(tp[0], tp[1], group))
            else:
                for slot, part in enumerate(self._by_key(group, tp, tp[0] in self.everywhere)):
                    if part:
                        out[slot].append(Batch(tp[0], tp[1], part))
        return out, counts, control

    def _by_key(self, group: list[Any], tp: TopicPartition, everywhere: bool) -> list[list[Any]]:
        table, groups = self.table, self.max_key_groups
        parts: list[list[Any]] = [[] for _ in range(self.slots)]
        keyless = parts[(zlib.crc32(tp[0].encode()) + tp[1]) % self.slots]
        for m in group:
            k = m.key()
            if k is not None:
                parts[table[key_group(k, groups)]].append(m)
            elif everywhere:
                for part in parts:
                    part.append(m)  # in its place among the keyed ones
            else:
                keyless.append(m)
        return parts
