"""Rebalance handling: which partitions this worker owns, and moving them safely.

Kafka's cooperative-sticky assignor hands partitions out and takes them back
through callbacks that run inside ``consume()`` on the fetcher thread.

Assigned (`Rebalancer.on_assign`):

1. A source topic that grew under keyed state read directly from it stops the
   worker (its keys would move to partitions without their state).
2. If adopting the new partitions would move a partition between slots, drain
   first — a synchronous checkpoint — so nothing fetched is lost or uncommitted.
3. Route the new set (`weir.service.router`); start the partitions' idle clocks and
   learn their committed offsets (for lag and for idleness) and, for repartition
   partitions that carry watermarks, the table of what their upstream had
   announced up to there (the offset's metadata, `weir.service.repartition_watermarks`).
4. Partitions with keyed state are assigned and paused at once and their
   restore is submitted; they resume when it finishes (`restores_done`) and, for
   a repartition partition, its table is known (read again, once a second, if
   step 3 could not); other partitions start at once.
5. Tell the slots what they own; update the standby set.
6. If another live member uses this worker's id (a second worker started with
   the same ``--worker-id``), make the next checkpoint commit even if nothing
   changed: the instance whose producer the other one fenced finds out there and
   stops (`weir.service.transaction`), even on an idle job.

Revoked (`on_revoke`): drain, then forget. Lost (`on_lost`: the group moved on
without us, e.g. after a session timeout): forget, and roll back to the last
checkpoint — nothing of the current epoch may commit for partitions we lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaException, TopicPartition

from weir.service.changelog import Changelogs
from weir.service.consumers import GroupConsumers
from weir.service.exceptions import WorkerFailed
from weir.service.flow import FlowControl
from weir.service.metrics import Metrics
from weir.service.repartition_watermarks import WatermarkChannels
from weir.service.restore import Restorer
from weir.service.router import SlotRouter
from weir.service.sampler import MetricsSampler
from weir.service.slot_pool import SlotPool
from weir.service.watermarks import WatermarkTracker

if TYPE_CHECKING:
    from weir.service.checkpoint import CheckpointCoordinator

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]
COMMITTED_S = 5.0
RETRY_TABLES_S = 1.0  # how often a table that could not be read is asked for again


class Rebalancer:
    """Owns the worker's partition set, its restores and the group callbacks."""

    def __init__(
        self,
        router: SlotRouter,
        slots: SlotPool,
        flow: FlowControl,
        watermarks: WatermarkTracker,
        channels: WatermarkChannels,
        consumer: GroupConsumers,
        sampler: MetricsSampler,
        changelogs: Changelogs,
        metrics: Metrics,
        topic_partitions: dict[str, int],
        timeout_s: float,
        drain: Callable[[str], None],
        rollback: Callable[[str], None],
        fail: Callable[[BaseException], None],
        duplicate: Callable[[], str | None],
    ) -> None:
        self.router = router
        self.slots = slots
        self.flow = flow
        self.watermarks = watermarks
        self.channels = channels
        self.consumer = consumer
        self.sampler = sampler
        self.changelogs = changelogs
        self.metrics = metrics
        self.topic_partitions = topic_partitions  # source topic -> partitions known
        self.timeout_s = timeout_s
        self.drain = drain
        self.rollback = rollback
        self.fail = fail
        self.duplicate = duplicate
        self.coordinator: CheckpointCoordinator | None = None
        self.restorer: Restorer | None = None  # set when the job has keyed state
        self.restoring: dict[TopicPartitionKey, int] = {}  # partition -> restore token
        self._restored: set[TopicPartitionKey] = set()  # restored, waiting for their table
        self._tables_asked = 0.0  # when tables that could not be read were last asked for
        self.failed = False  # a failed worker commits nothing more

    # -- assigned ---------------------------------------------------------------
    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels(self.metrics.job).inc()
        added = {(tp.topic, tp.partition) for tp in partitions}
        if not self._partition_counts_hold(added):  # Step 1
            return
        wanted = set(self.router.pins) | added
        if self.router.moves(wanted):  # Step 2
            self.drain("moving partitions between slots")
        self.router.reassign(wanted)  # Step 3
        now = time.monotonic()
        for tp in added:
            self.watermarks.activate(tp, now)
        try:
            # Never hold a rebalance long for it: a table not read now is asked for later.
            for tp in consumer.committed(partitions, timeout=COMMITTED_S):
                if tp.offset >= 0:
                    self.coordinator.committed[(tp.topic, tp.partition)] = tp.offset
                self.channels.load((tp.topic, tp.partition), tp.metadata)
        except KafkaException as exc:
            log.warning("could not read committed offsets of %s: %s", sorted(added), exc)
        stateful = self.changelogs.input_topics
        restore = [tp for tp in partitions if tp.topic in stateful]
        if restore:  # Step 4
            # Assign now (the client would right after this callback) so they can be
            # paused until their state is restored.
            consumer.incremental_assign(partitions)
            keys = [(tp.topic, tp.partition) for tp in restore]
            self.flow.pause_now(keys)
            for key in keys:
                self.restoring[key] = self.restorer.submit(key)
        self._changed()  # Step 5
        log.info("assigned %s; now %d partitions", sorted(added), len(wanted))
        duplicate = self.duplicate()  # Step 6
        if duplicate is not None:
            log.warning(
                "%s; the next checkpoint commits to find out which one is fenced", duplicate
            )
            self.coordinator.prove_ownership = True

    def _partition_counts_hold(self, added: set[TopicPartitionKey]) -> bool:
        """A source topic grew. Keyed state partitioned by it would be silently wrong
        (keys move to new partitions without their state), so that stops the job; a
        topic read through a repartition topic, or stateless, just gains work."""
        keyed_topics = {op.input_topic: [] for op in self.changelogs.operators}
        for op in self.changelogs.operators:
            keyed_topics[op.input_topic].append(op.name)
        for topic, p in sorted(added):
            known = self.topic_partitions.get(topic)
            if known is None or p < known:
                continue
            if topic in keyed_topics:
                self.fail(
                    WorkerFailed(
                        f"topic {topic!r} grew from {known} to at least {p + 1} partitions"
                        f" while {', '.join(keyed_topics[topic])} keeps keyed state"
                        " partitioned by it; keys now map to other partitions than their"
                        " state. Restore the partition count, or key with key_by(fn) (a"
                        " repartition topic with a fixed count decouples state from the"
                        " source) and start a new --group"
                    )
                )
                return False
            log.info("topic %s grew to at least %d partitions", topic, p + 1)
            self.topic_partitions[topic] = p + 1
        return True

    def restores_done(self) -> None:
        """Partitions whose restore finished, and whose watermark table is known, start
        processing (flow control resumes them)."""
        if self.restorer.error is not None:
            raise WorkerFailed(f"state restore failed: {self.restorer.error}")
        finished = self.restorer.finished()
        self._restored.update(tp for tp, token in finished if self.restoring.get(tp) == token)
        now = time.monotonic()
        unknown = [tp for tp in self._restored if not self.channels.loaded(tp)]
        if unknown and now - self._tables_asked >= RETRY_TABLES_S:
            self._tables_asked = now
            self._read_tables(unknown)
        done = [tp for tp in self._restored if self.channels.loaded(tp)]
        for tp in done:
            self._restored.discard(tp)
            del self.restoring[tp]
            self.watermarks.activate(tp, now)  # its idle clock starts now
            log.info("%s[%d] restored; processing it", *tp)
        if done and self.watermarks:
            self.slots.assign_ownership(self.router, self.restoring)

    def _read_tables(self, tps: list[TopicPartitionKey]) -> None:
        """Step 4: the committed tables step 3 could not read."""
        try:
            committed = self.consumer.committed([TopicPartition(*tp) for tp in tps], 1.0)
        except KafkaException as exc:
            log.warning("could not read the watermark tables of %s: %s", sorted(tps), exc)
            return
        for tp in committed:
            self.channels.load((tp.topic, tp.partition), tp.metadata)

    def resync(self) -> None:
        """After a commit whose outcome is unknown: take every owned partition's keyed
        state from its changelog again — from the local copy's offset to the end, which
        holds the epoch's changes if it did commit — before processing it again."""
        if self.restorer is None:
            return
        stateful = self.changelogs.input_topics
        tps = [tp for tp in self.router.pins if tp[0] in stateful and tp not in self.restoring]
        self.flow.pause_now(tps)
        for tp in tps:
            self._restored.discard(tp)
            self.restoring[tp] = self.restorer.submit(tp)
        log.warning("taking the state of %s from the changelogs again", sorted(tps))

    # -- revoked and lost ---------------------------------------------------------
    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        if not revoked:
            return
        self.metrics.rebalances.labels(self.metrics.job).inc()
        if not self.failed:
            self.drain("revoking partitions")
        self._forget(revoked)
        log.info("revoked %s; now %d partitions", sorted(revoked), len(self.router.pins))

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self.metrics.rebalances.labels(self.metrics.job).inc()
        self._forget(lost)
        self.rollback(f"partitions lost {sorted(lost)}")

    def _forget(self, partitions: set[TopicPartitionKey]) -> None:
        self.router.reassign(set(self.router.pins) - partitions)
        self.flow.forget(partitions)
        for tp in partitions & self.restoring.keys():
            self.restorer.cancel(tp)
            del self.restoring[tp]
        self._restored -= partitions
        for tp in partitions:
            self.watermarks.forget(tp)
        self.channels.forget(partitions)
        self.sampler.forget(partitions)
        self._changed()

    def _changed(self) -> None:
        if self.watermarks:
            self.slots.assign_ownership(self.router, self.restoring)
        self._update_standby()
        self.metrics.assigned_partitions.set(len(self.router.pins))

    def _update_standby(self) -> None:
        """Standby replicas: warm copies of every stateful partition this worker does not own."""
        if self.restorer is None or not self.restorer.standby_enabled:
            return
        every = {
            (t, p)
            for t in self.changelogs.input_topics
            for p in range(self.topic_partitions.get(t, 0))
        }
        self.restorer.set_standby(every - set(self.router.pins))
