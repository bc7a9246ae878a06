"""Benchmark job: an I/O-bound map alone (slot scaling without an exchange).

Each record is mapped by a function that waits ``BENCH_WAIT_MS`` with the GIL
released (``time.sleep``, standing in for a call to another service) and gains
the field ``x``; records stay in the slot their partition (or, with fewer
partitions than slots, their Kafka key) gives. Topics come from ``BENCH_IN`` /
``BENCH_OUT``.
"""

import os
import time

from weir import Job

WAIT_S = float(os.environ.get("BENCH_WAIT_MS", "2")) / 1000


def call_service(r: dict) -> dict:
    time.sleep(WAIT_S)
    return {**r, "x": r["v"] * 2}


job = Job("bench-io-plain")
(
    job.source(os.environ["BENCH_IN"], value="json")
    .map(call_service)
    .sink(os.environ["BENCH_OUT"], value="json")
)
