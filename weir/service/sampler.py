"""Once-a-second gauges: slot busy and backpressure ratios, consumer lag, state size.

Sampled from the fetcher thread, never per record. Lag is what Kafka's tools
report: log end minus the committed (processed) offset. A partition that
leaves the worker loses its lag series at once, so no stale series remain.
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

    def sample(self, elapsed: float) -> None:
        """Gauges over the last ``elapsed`` seconds."""
        w = self.worker
        m, job = self.metrics, self.metrics.job
        for slot in w.slots:
            busy, slot.stats.busy_s = slot.stats.busy_s, 0.0
            m.slot_busy_ratio.labels(job, str(slot.slot)).set(min(1.0, busy / elapsed))
            m.slot_backpressure_ratio.labels(job, str(slot.slot)).set(
                1.0 if slot.slot in w.flow.full_slots else 0.0
            )
        committed = w.coordinator.committed
        for topic, p in w.router.partitions:
            try:
                low, high = w.consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            except KafkaException:
                continue
            if high >= 0:
                done = committed.get((topic, p), max(low, 0))
                self.lag[(topic, p)] = max(0, high - done)
                m.consumer_lag.labels(job, topic, str(p)).set(self.lag[(topic, p)])
        if w.store is not None:
            for op in w.changelogs.operators:
                size = sum(w.store.size_bytes(state) for state in op.states)
                m.state_bytes.labels(job, op.name).set(size)

    def forget(self, partitions: Iterable[TopicPartitionKey]) -> None:
        for tp in partitions:
            if self.lag.pop(tp, None) is not None:
                self.metrics.consumer_lag.remove(self.metrics.job, tp[0], str(tp[1]))
