"""Prometheus metrics: the contract's names (docs/architecture.md), prefixed ``weir_``,
labelled ``weir_job`` (the job's name).

The job label is ``weir_job``, not ``job``: Prometheus gives every scraped series its
own ``job`` label (the scrape job), and a target's ``job`` would either be renamed to
``exported_job`` or, with ``honor_labels``, overwrite the scrape's.

Each worker process owns one `Metrics` (its own registry, so tests may run
several workers in one interpreter). Callers update metrics once per batch or
per checkpoint, never per record. Series of one partition (records in, lag) are
removed when the partition leaves the worker (`forget_partitions`), so a scrape
shows only what the worker owns; a counter that comes back starts at 0 again,
which ``rate()`` and ``increase()`` read as a counter reset. Time shares are
counters of seconds (``slot_busy_seconds_total``): ``rate()`` over any window is
the share of that window, where a sampled ratio would only show the instant of
the scrape.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from weir import __version__

JOB_LABEL = "weir_job"
_CHECKPOINT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60)
# A restore replays a changelog partition: milliseconds when local state is current,
# minutes to an hour for a large state on a fresh machine.
_RESTORE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)


class Metrics:
    """The worker's metrics, bound to one job label; ``worker_id`` and ``group`` name
    the worker in ``weir_worker_info``."""

    def __init__(self, job: str, *, worker_id: str = "", group: str = "") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.job = job
        self._in_counters: dict[tuple[str, int], Any] = {}
        self._lag_gauges: dict[tuple[str, int], Any] = {}

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"weir_{name}", doc, (JOB_LABEL, *labels), registry=r)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"weir_{name}", doc, (JOB_LABEL, *labels), registry=r)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"weir_{name}", doc, (JOB_LABEL,), buckets=buckets, registry=r)

        self.worker_info = gauge(
            "worker_info",
            "Always 1: the worker, its consumer group and the Weir version it runs.",
            ("worker_id", "group", "version"),
        )
        self.worker_info.labels(job, worker_id, group, __version__).set(1)

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
        self.slot_busy = counter(
            "slot_busy_seconds",
            "Seconds a slot spent processing; rate() is the share of time it was busy.",
            ("slot",),
        )
        self.slot_backpressure = counter(
            "slot_backpressure_seconds",
            "Seconds a slot was full, its input paused or held back; rate() is the share"
            " of time it backpressured.",
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
            _RESTORE_BUCKETS,
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

    def set_lag(self, tp: tuple[str, int], lag: int) -> None:
        """A partition's consumer lag (label lookups cached)."""
        gauge = self._lag_gauges.get(tp)
        if gauge is None:
            gauge = self._lag_gauges[tp] = self.consumer_lag.labels(self.job, tp[0], str(tp[1]))
        gauge.set(lag)

    def forget_partitions(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Remove the series of partitions that left the worker (revoked or lost)."""
        for tp in partitions:
            topic, p = tp[0], str(tp[1])
            if self._in_counters.pop(tp, None) is not None:
                self.records_in.remove(self.job, topic, p)
            if self._lag_gauges.pop(tp, None) is not None:
                self.consumer_lag.remove(self.job, topic, p)
