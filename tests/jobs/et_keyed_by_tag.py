"""Test job: like windowed.py, but keyed by ``r["tag"]`` with ``key_by(fn)``, so records
reach the windows through the repartition topic (the path of examples/sensor_stats.py).
"""

import os

from operators import Job, Session, Sliding, Tumbling

SPECS = {
    "tumbling": lambda: Tumbling(seconds=10),
    "sliding": lambda: Sliding(seconds=10, every=2),
    "session": lambda: Session(gap=5),
}

job = Job(os.environ.get("WEIR_TEST_JOB", "windowed"))
(
    job.source(
        os.environ["WEIR_TEST_IN"],
        timestamp=lambda r: r["ts"],
        max_out_of_orderness=float(os.environ.get("WEIR_TEST_OOO", "2")),
        idle_timeout=float(os.environ.get("WEIR_TEST_IDLE", "1")),
    )
    .key_by(lambda r: r["tag"])
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
