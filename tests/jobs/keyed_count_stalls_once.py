"""Test job: tests/jobs/keyed_count.py whose map stalls once, at one record.

The record ``n == WEIR_TEST_STALL_AT`` sleeps ``WEIR_TEST_STALL_S`` seconds the first
time it is seen (the file ``WEIR_TEST_STALL_FLAG`` records that it did): longer than
the worker's ``--checkpoint-timeout-ms``, the checkpoint times out, and the restart
strategy rolls the worker back to its last checkpoint; the replay goes through.
"""

import os
import time
from pathlib import Path

from weir import Job

STALL_AT = int(os.environ["WEIR_TEST_STALL_AT"])
STALL_S = float(os.environ["WEIR_TEST_STALL_S"])
FLAG = Path(os.environ["WEIR_TEST_STALL_FLAG"])


def count_one(r: dict) -> dict:
    if r["n"] == STALL_AT and not FLAG.exists():
        FLAG.touch()
        time.sleep(STALL_S)
    return {"count": 1, "last": r["n"]}


job = Job("keyed-count")
(
    job.source(os.environ["WEIR_TEST_IN"])
    .key_by()
    .map(count_one)
    .reduce(lambda acc, r: {"count": acc["count"] + 1, "last": r["last"]}, name="counts")
    .sink(os.environ["WEIR_TEST_OUT"])
)
