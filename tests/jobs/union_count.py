"""Test job: two topics merged with union, then a running count per ``r["k"]``.

Topic B's records pass a rebalance before the union, so the union aligns barriers
from the source segment and from an exchange; the count sits behind the
repartition topic of ``key_by(fn)``. Each output is ``{"key": k, "count": c,
"last": n}``: ``last`` names the one input that made the count ``c``.
"""

import os

from weir import Job

job = Job(os.environ.get("WEIR_TEST_JOB", "union-count"))
a = job.source(os.environ["WEIR_TEST_IN_A"])
b = job.source(os.environ["WEIR_TEST_IN_B"]).rebalance()
(
    a.union(b, name="both")
    .key_by(lambda r: r["k"])
    .map(lambda r: {"count": 1, "last": r["n"]})
    .reduce(lambda acc, r: {"count": acc["count"] + 1, "last": r["last"]}, name="counts")
    .sink(os.environ["WEIR_TEST_OUT"])
)
