"""Test job: event-time windows over sensor readings keyed by the record key.

WEIR_TEST_WINDOW is "tumbling", "sliding" or "session"; WEIR_TEST_LATENESS is
the allowed lateness in seconds; WEIR_TEST_LATE names the late-record topic.
WEIR_TEST_KEY_BY=tag keys by ``r["tag"]`` with ``key_by(fn)`` instead, so records
reach the windows through the repartition topic (the path of examples/sensor_stats.py).
"""

import os

from weir import Job, Session, Sliding, Tumbling

SPECS = {
    "tumbling": lambda: Tumbling(seconds=10),
    "sliding": lambda: Sliding(seconds=10, every=2),
    "session": lambda: Session(gap=5),
}

job = Job(os.environ.get("WEIR_TEST_JOB", "windowed"))
readings = job.source(
    os.environ["WEIR_TEST_IN"],
    timestamp=lambda r: r["ts"],
    max_out_of_orderness=float(os.environ.get("WEIR_TEST_OOO", "2")),
    idle_timeout=float(os.environ.get("WEIR_TEST_IDLE", "1")),
)
by_tag = os.environ.get("WEIR_TEST_KEY_BY") == "tag"
(
    (readings.key_by(lambda r: r["tag"]) if by_tag else readings.key_by())
    .window(
        SPECS[os.environ.get("WEIR_TEST_WINDOW", "tumbling")](),
        allowed_lateness=float(os.environ.get("WEIR_TEST_LATENESS", "0")),
        late_topic=os.environ.get("WEIR_TEST_LATE") or None,
    )
    .aggregate(
        count="count",
        sum=("sum", "value"),
        min=("min", "value"),
        max=("max", "value"),
        mean=("mean", "value"),
        name="stats",
    )
    .sink(os.environ["WEIR_TEST_OUT"])
)
