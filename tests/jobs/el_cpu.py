"""Benchmark job (elasticity): CPU-bound work per record, then a keyed aggregate.

Input ``{"id", "v", "tag"}``; a map burns WEIR_TEST_ITERS iterations of pure-Python
arithmetic per record (the benchmark calibrates it to ~50 µs), then
``key_by(tag)`` (a repartition topic) and ``aggregate(count, total)`` per tag.
With WEIR_TEST_KEYED=0 the burnt records go straight to the sink (no state, no
repartition topic: the same CPU work, spread over the source partitions only).
"""

import os

from weir import Job

ITERS = int(os.environ.get("WEIR_TEST_ITERS", "300"))


def burn(record: dict) -> dict:
    x = record["id"]
    for _ in range(ITERS):
        x = (x * 31 + 7) % 1_000_003
    return {**record, "x": x}


job = Job(os.environ.get("WEIR_TEST_JOB", "el-cpu"))
burnt = job.source(os.environ["WEIR_TEST_IN"]).map(burn, name="burn")
if os.environ.get("WEIR_TEST_KEYED", "1") == "1":
    (
        burnt.key_by(lambda r: r["tag"], name="by-tag")
        .aggregate(count="count", total=("sum", "v"), name="totals")
        .sink(os.environ["WEIR_TEST_OUT"])
    )
else:
    burnt.sink(os.environ["WEIR_TEST_OUT"])
