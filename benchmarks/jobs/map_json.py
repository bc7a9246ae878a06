"""Benchmark job: a stateless JSON map, the same work as `benchmarks/raw_loop.py`.

Topic names come from the environment (``BENCH_IN``, ``BENCH_OUT``) so that
every benchmark run can use fresh topics with the same job file.
"""

import os

from weir import Job

job = Job("bench-map")
(
    job.source(os.environ["BENCH_IN"], value="json")
    .map(lambda r: {**r, "x": r["v"] * 2})
    .sink(os.environ["BENCH_OUT"], value="json")
)
