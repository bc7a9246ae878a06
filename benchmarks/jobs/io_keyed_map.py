"""Benchmark job: an I/O-bound map after ``key_by(fn)`` (slot scaling).

Each record is keyed by ``id % BENCH_KEYS`` (not its Kafka key, so records move
between slots through the hash exchange), then mapped by a function that waits
``BENCH_WAIT_MS`` with the GIL released (``time.sleep``, standing in for a call to
another service) and adds the field ``x``. Topic names come from ``BENCH_IN`` /
``BENCH_OUT``.
"""

import os
import time

from weir import Job

KEYS = int(os.environ.get("BENCH_KEYS", "1000"))
WAIT_S = float(os.environ.get("BENCH_WAIT_MS", "2")) / 1000


def call_service(r: dict) -> dict:
    time.sleep(WAIT_S)
    return {**r, "x": r["v"] * 2}


job = Job("bench-io-map")
(
    job.source(os.environ["BENCH_IN"], value="json")
    .key_by(lambda r: r["id"] % KEYS)
    .map(call_service)
    .sink(os.environ["BENCH_OUT"], value="json")
)
