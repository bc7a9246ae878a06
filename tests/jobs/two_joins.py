"""Test job: streams A and B (``{"id", "k", "t"}``, keyed by ``k``) joined by the joins
WEIR_TEST_JOINS names, as ``join=topic`` pairs (comma-separated), each written to its
topic: ``tumbling-inner|left|full`` (1 s windows), ``session-inner|left|full`` (300 ms
gap), ``interval`` (B within [-200 ms, +300 ms] of A). The joins' own topics get
WEIR_TEST_PARTITIONS partitions.
"""

import os

from weir import Job, Session, Tumbling

IDLE = float(os.environ.get("WEIR_TEST_IDLE", "60"))
PARTITIONS = int(os.environ.get("WEIR_TEST_PARTITIONS", "2"))

job = Job(os.environ.get("WEIR_TEST_JOB", "two-joins"))


def side(topic: str):
    return job.source(
        topic, timestamp=lambda r: r["t"], max_out_of_orderness=0.5, idle_timeout=IDLE
    ).key_by(lambda r: r["k"])


a, b = side(os.environ["WEIR_TEST_IN_A"]), side(os.environ["WEIR_TEST_IN_B"])
for pair in os.environ["WEIR_TEST_JOINS"].split(","):
    name, out = pair.split("=")
    if name == "interval":
        joined = a.interval_join(b, lower=-0.2, upper=0.3, partitions=PARTITIONS, name=name)
    else:
        kind, how = name.split("-")
        spec = Tumbling(seconds=1) if kind == "tumbling" else Session(gap=0.3)
        joined = a.join(b, how=how).window(spec).apply(partitions=PARTITIONS, name=name)
    joined.sink(out)
