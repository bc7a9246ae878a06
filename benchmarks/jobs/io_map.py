"""Benchmark job: an I/O-bound map (slot scaling), after ``key_by(fn)`` or alone.

Each record is mapped by a function that waits ``BENCH_WAIT_MS`` with the GIL
released (``time.sleep``, standing in for a call to another service) and gains the
field ``x``. With ``BENCH_KEYS`` > 0 each record is first keyed by
``id % BENCH_KEYS`` (not its Kafka key, so records move between slots through the
hash exchange); with 0 the map runs alone and records stay in the slot their
partition (or, with fewer partitions than slots, their Kafka key) gives. Topics
come from ``BENCH_IN`` / ``BENCH_OUT``.
"""

import os
import time

from weir import Job

KEYS = int(os.environ.get("BENCH_KEYS", "1000"))
WAIT_S = float(os.environ.get("BENCH_WAIT_MS", "2")) / 1000


def call_service(r: dict) -> dict:
    time.sleep(WAIT_S)
    return {**r, "x": r["v"] * 2}


job = Job("bench-io-map" if KEYS else "bench-io-plain")
stream = job.source(os.environ["BENCH_IN"], value="json")
if KEYS:
    stream = stream.key_by(lambda r: r["id"] % KEYS)
stream.map(call_service).sink(os.environ["BENCH_OUT"], value="json")
