"""Test job: a running count per Kafka record key, exactly once.

Each output is ``{"key": k, "count": c, "last": n}``: ``c`` is how many records
of key ``k`` the state has seen, ``last`` the ``n`` of the record that made it
``c`` — so every output names the one input it derives from.
"""

import os

from weir import Job

job = Job(os.environ.get("WEIR_TEST_JOB", "keyed-count"))
(
    job.source(os.environ["WEIR_TEST_IN"])
    .key_by()
    .map(lambda r: {"count": 1, "last": r["n"]})
    .reduce(lambda acc, r: {"count": acc["count"] + 1, "last": r["last"]}, name="counts")
    .sink(os.environ["WEIR_TEST_OUT"])
)
