"""Test job: two topics of timestamped readings merged with union, keyed by
``r["k"]`` (a repartition topic written from both), counted in 10 s tumbling
windows. Each output is ``{"key": k, "window_start": s, "window_end": e, "n": c}``.
"""

import os

from weir import Job, Tumbling

job = Job(os.environ.get("WEIR_TEST_JOB", "union-windows"))
clock = {"timestamp": lambda r: r["ts"], "max_out_of_orderness": 1.0}  # never idle
a = job.source(os.environ["WEIR_TEST_IN_A"], **clock)
b = job.source(os.environ["WEIR_TEST_IN_B"], **clock)
(
    a.union(b, name="both")
    .key_by(lambda r: r["k"], name="by-k")
    .window(Tumbling(seconds=10))
    .aggregate(n="count", name="per-k")
    .sink(os.environ["WEIR_TEST_OUT"])
)
