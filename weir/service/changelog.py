"""Changelog topics: the durable copy of every stateful operator's keyed state.

One compacted topic per stateful operator, ``<group>.<operator>.changelog``,
with as many partitions as the operator's input topic: the state written while
processing input partition ``p`` goes to changelog partition ``p``, so a
partition's state moves with the partition. A record is one state write — key
``changelog_key(state, storage key)`` (`weir.state.layout`), value the serialized
value or a tombstone — so compaction keeps the latest value of every key.

The life of a state change:

1. A slot's operator writes into the slot's epoch buffer (`weir.state.epoch`), which
   encodes the value at once and refuses, at that record, one the serde cannot
   encode or whose changelog record would exceed what the topic accepts
   (`Changelogs.limits`): a changelog record the broker refuses would fail the
   whole checkpoint.
2. At the checkpoint barrier the slot freezes the epoch and produces its
   changelog records (`Changelogs.records`: the bytes encoded in step 1) into the
   open transaction.
3. The transaction commits (`weir.service.transaction`).
4. Only then are the writes applied to RocksDB, in one write batch together
   with, per changelog partition, the offset the local copy is now complete up
   to (`Changelogs.end_offsets`): only this worker writes those partitions, so
   their high watermark right after the commit is that offset.
5. On assignment, `weir.service.restore` replays each changelog partition from the
   recorded offset (local recovery) to its end.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from weir.operators.physical import PhysicalPlan
from weir.service.exceptions import KafkaUnavailable, TopicsMismatch
from weir.service.topics import TopicLimits, ensure_topic, partition_counts, topic_limits
from weir.state.layout import changelog_key, partition_of
from weir.state.store import Write

TopicPartitionKey = tuple[str, int]


class Changelogs:
    """The changelog topics of one job in one group."""

    def __init__(self, plan: PhysicalPlan) -> None:
        self.operators = list(plan.stateful)
        self.topic_of = {s: op.changelog for op in self.operators for s in op.states}
        self._operator_of = {op.changelog: op.name for op in self.operators}

    def __bool__(self) -> bool:
        return bool(self.operators)

    @property
    def states(self) -> list[str]:
        return [s for op in self.operators for s in op.states]

    @property
    def input_topics(self) -> set[str]:
        return {op.input_topic for op in self.operators}

    @property
    def topics(self) -> list[str]:
        return [op.changelog for op in self.operators]

    def limits(self, admin: AdminClient, timeout_s: float) -> dict[str, TopicLimits]:
        """What each changelog topic accepts, read at start: its ``max.message.bytes``
        (less overhead); the worker caps it at what its producer sends (`capped`)."""
        return topic_limits(admin, self.topics, timeout_s)

    def record_limits(self, limits: dict[str, TopicLimits]) -> dict[str, int]:
        """Per state, the most bytes (key and value) one of its changelog records may
        have: what the epoch buffers refuse beyond, at the record (`weir.state.epoch`)."""
        return {
            state: limits[topic].max_bytes
            for state, topic in self.topic_of.items()
            if topic in limits and limits[topic].max_bytes is not None
        }

    def provision(self, admin: AdminClient, timeout_s: float) -> None:
        """Create missing changelogs (compacted, partitioned like their input); refuse
        one whose partition count differs from its input's, as keyed state follows
        input partitions."""
        counts = partition_counts(admin, timeout_s)
        for op in self.operators:
            wanted = counts[op.input_topic]
            ensure_topic(admin, op.changelog, wanted, timeout_s, {"cleanup.policy": "compact"})
            have = partition_counts(admin, timeout_s)[op.changelog]
            if have != wanted:
                raise TopicsMismatch(
                    f"changelog {op.changelog!r} has {have} partitions but its input"
                    f" {op.input_topic!r} has {wanted}; keyed state follows input partitions,"
                    " so a source topic's partition count must not change under a running"
                    " keyed job (restore the old count, or start a new --group)"
                )

    def records(self, writes: Iterable[Write]) -> Iterator[tuple[str, bytes, bytes | None, int]]:
        """Step 2: (topic, key, value, partition) of each write's changelog record."""
        topic_of = self.topic_of
        for state, skey, data in writes:
            yield topic_of[state], changelog_key(state, skey), data, partition_of(skey)

    def end_offsets(
        self, admin: AdminClient, writes: list[Write], timeout_s: float
    ) -> dict[tuple[str, int], int]:
        """Step 4: per (operator, partition) touched by ``writes``, the changelog's end
        offset just after their commit."""
        touched = {(self.topic_of[state], partition_of(skey)) for state, skey, _ in writes}
        if not touched:
            return {}
        specs = {TopicPartition(t, p): OffsetSpec.latest() for t, p in touched}
        futures = admin.list_offsets(specs, request_timeout=timeout_s)
        ends = {
            (self._operator_of[tp.topic], tp.partition): f.result(timeout=timeout_s).offset
            for tp, f in futures.items()
        }
        unknown = sorted(key for key, end in ends.items() if end < 0)
        if unknown:  # seen while a reset connection came back: ask again
            raise KafkaUnavailable(f"no end offset known yet for changelog partitions {unknown}")
        return ends
