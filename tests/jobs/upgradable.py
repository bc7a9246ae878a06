"""Test job: a running count per Kafka record key, as successive versions of a job
define it.

WEIR_TEST_EXTRA_MAP=1 adds a map before the count, which shifts the generated names
of the operators after it (``reduce-4`` becomes ``reduce-5``); WEIR_TEST_STATE_NAME
names the count (unset: a generated name). Outputs are ``{"key", "count", "last"}``.
"""

import os

from weir import Job

job = Job(os.environ.get("WEIR_TEST_JOB", "upgradable"))
stream = job.source(os.environ["WEIR_TEST_IN"]).key_by()
if os.environ.get("WEIR_TEST_EXTRA_MAP") == "1":
    stream = stream.filter(lambda r: "n" in r)
(
    stream.map(lambda r: {"count": 1, "last": r["n"]})
    .reduce(
        lambda acc, r: {"count": acc["count"] + 1, "last": r["last"]},
        name=os.environ.get("WEIR_TEST_STATE_NAME") or None,
    )
    .sink(os.environ["WEIR_TEST_OUT"])
)
