"""Prometheus metrics: the contract's names (docs/architecture.md), prefixed ``weir_``,
labelled ``job``.

Each worker process owns one `Metrics` (its own registry, so tests may run
several workers in one interpreter). Callers update metrics once per batch or
per checkpoint, never per record.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

_CHECKPOINT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60)


class Metrics:
    """The worker's metrics, bound to one job label."""

    def __init__(self, job: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.job = job
        self._in_counters: dict[tuple[str, int], Any] = {}

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"weir_{name}", doc, ("job", *labels), registry=r)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"weir_{name}", doc, ("job", *labels), registry=r)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"weir_{name}", doc, ("job",), buckets=buckets, registry=r)

        self.records_in = counter(
            "records_in", "Records consumed from source topics.", ("topic", "partition")
        )
        self.records_out = counter("records_out", "Records produced to sink topics.", ("topic",))
        self.records_failed = counter(
            "records_failed",
            "Records that failed to decode or whose function raised.",
            ("operator", "reason"),
        )
        self.consumer_lag = gauge(
            "consumer_lag", "High watermark minus position, per partition.", ("topic", "partition")
        )
        self.checkpoint_duration = histogram(
            "checkpoint_duration_seconds",
            "From barrier injection to commit.",
            _CHECKPOINT_BUCKETS,
        ).labels(job)
        self.checkpoint_alignment = histogram(
            "checkpoint_alignment_seconds",
            "From barrier injection until every slot passed it.",
            _CHECKPOINT_BUCKETS,
        ).labels(job)
        self.checkpoints = counter("checkpoints", "Checkpoints by outcome.", ("status",))
        self.last_checkpoint_id = gauge(
            "last_checkpoint_id", "Id of the last completed checkpoint."
        ).labels(job)
        self.slot_busy_ratio = gauge(
            "slot_busy_ratio", "Share of time a slot spent processing.", ("slot",)
        )
        self.slot_backpressure_ratio = gauge(
            "slot_backpressure_ratio",
            "Share of time the partitions feeding a slot were paused because it was full.",
            ("slot",),
        )
        self.assigned_partitions = gauge(
            "assigned_partitions", "Source partitions assigned to this worker."
        ).labels(job)
        self.rebalances = counter("rebalances", "Group rebalances this worker took part in.")
        self.restarts = counter(
            "restarts", "In-process restarts from the last checkpoint after a slot failed."
        )
        self.records_late = counter(
            "records_late",
            "Records that arrived after their window was gone (reason late), or whose event"
            " time was too far ahead of the wall clock (reason future).",
            ("operator", "reason"),
        )
        self.watermark_lag = gauge(
            "watermark_lag_seconds", "Wall clock minus the worker's event-time watermark."
        ).labels(job)
        self.state_bytes = gauge(
            "state_bytes", "Estimated RocksDB bytes of an operator's state.", ("operator",)
        )
        self.state_restore = histogram(
            "state_restore_seconds",
            "Time to restore one assigned partition's state from its changelogs.",
            _CHECKPOINT_BUCKETS,
        ).labels(job)
        self.restored_records = counter(
            "restored_records", "Changelog records replayed into local state.", ("operator",)
        )
        self.end_to_end_latency = histogram(
            "end_to_end_latency_seconds",
            "From a source record's Kafka timestamp to its output being committed.",
            _LATENCY_BUCKETS,
        ).labels(job)

    def count_in(self, counts: dict[tuple[str, int], int]) -> None:
        """Records consumed per partition, once per fetched batch (label lookups cached)."""
        for tp, n in counts.items():
            counter = self._in_counters.get(tp)
            if counter is None:
                counter = self._in_counters[tp] = self.records_in.labels(
                    self.job, tp[0], str(tp[1])
                )
            counter.inc(n)
