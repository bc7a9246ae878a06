"""Once a second: slot busy and backpressure seconds, consumer lag, state size.

Sampled from the fetcher thread, never per record. Lag is what Kafka's tools
report: log end minus the committed (processed) offset. A partition that
leaves the worker loses its series at once (`Metrics.forget_partitions`), so no
stale series remain.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException, TopicPartition

if TYPE_CHECKING:
    from weir.service.worker import Worker

TopicPartitionKey = tuple[str, int]


class MetricsSampler:
    """Owns the sampled gauges and the lag per partition that /status shows."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.metrics = worker.metrics
        self.lag: dict[TopicPartitionKey, int] = {}
        self._full: dict[int, float] = {}  # flow control's full seconds at the last sample

    def sample(self) -> None:
        """Add the slots' busy and backpressure seconds since the last sample to their
        counters; set the gauges."""
        w = self.worker
        m, job = self.metrics, self.metrics.job
        full_now = dict(w.flow.full_s)  # seconds each slot was full, ever
        full = {s: total - self._full.get(s, 0.0) for s, total in full_now.items()}
        self._full = full_now
        for slot in w.slots:
            busy, slot.stats.busy_s = slot.stats.busy_s, 0.0
            m.slot_busy.labels(job, str(slot.slot)).inc(busy)
            m.slot_backpressure.labels(job, str(slot.slot)).inc(full.get(slot.slot, 0.0))
        committed = w.coordinator.committed
        for topic, p in w.router.partitions:
            try:
                low, high = w.consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            except KafkaException:
                continue
            if high >= 0:
                done = committed.get((topic, p), max(low, 0))
                self.lag[(topic, p)] = max(0, high - done)
                m.set_lag((topic, p), self.lag[(topic, p)])
        if w.store is not None:
            for op in w.changelogs.operators:
                size = sum(w.store.size_bytes(state) for state in op.states)
                m.state_bytes.labels(job, op.name).set(size)

    def forget(self, partitions: Iterable[TopicPartitionKey]) -> None:
        """Partitions that left the worker: their lag and their series go."""
        partitions = list(partitions)
        for tp in partitions:
            self.lag.pop(tp, None)
        self.metrics.forget_partitions(partitions)
