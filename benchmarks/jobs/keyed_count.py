"""Benchmark job: a running count per Kafka record key (keyed state in RocksDB).

Every input record updates its key's count and emits ``{"key": k, "count": c}``,
so the output has exactly one record per input record. The operator is named
``counts``: its state is ``counts.acc`` and its changelog
``<group>.counts.changelog``. Topic names come from ``BENCH_IN`` / ``BENCH_OUT``.
"""

import os

from weir import Job

job = Job("bench-keyed-count")
(
    job.source(os.environ["BENCH_IN"], value="json")
    .key_by()
    .aggregate(count="count", name="counts")
    .sink(os.environ["BENCH_OUT"], value="json")
)
