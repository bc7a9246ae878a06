"""Test job: every record goes to one key behind an exchange (``key_by(fn)`` feeding a
stateless map), whose function is slow: the worst case for memory in a worker."""

import os
import time

from weir import Job


def slow(record: dict) -> dict:
    time.sleep(float(os.environ.get("WEIR_TEST_DELAY", "0.02")))
    return {"n": record["n"], "size": len(record["pad"])}


job = Job("hot-key")
(
    job.source(os.environ["WEIR_TEST_IN"])
    .key_by(lambda r: "hot")
    .map(slow, name="slow")
    .sink(os.environ["WEIR_TEST_OUT"])
)
