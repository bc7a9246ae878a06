"""Test job for the status page: every kind of edge its job graph draws.

One source (WEIR_TEST_IN) whose map waits WEIR_TEST_SLEEP_MS per record (so its task
is measurably busy), then two branches: ``key_by(fn)`` with no state after it — a hash
exchange between slots — into a sink (WEIR_TEST_OUT); and ``key_by(fn)`` into 2-second
event-time windows — through a repartition topic — into a sink (WEIR_TEST_COUNTS).
"""

import os
import time

from weir import Job, Tumbling

SLEEP = float(os.environ.get("WEIR_TEST_SLEEP_MS", "0")) / 1000


def slow(record: dict) -> dict:
    time.sleep(SLEEP)
    return record


job = Job("dataflow")
readings = job.source(
    os.environ["WEIR_TEST_IN"], value="json", max_out_of_orderness=0.5, idle_timeout=1.0
).map(slow)
(
    readings.key_by(lambda r: str(r["n"] % 10), name="by-digit")
    .map(lambda r: {**r, "seen": True})
    .sink(os.environ["WEIR_TEST_OUT"])
)
(
    readings.key_by(lambda r: str(r["n"] % 10), name="by-digit-counted")
    .window(Tumbling(seconds=2))
    .aggregate(count="count")
    .sink(os.environ["WEIR_TEST_COUNTS"])
)
