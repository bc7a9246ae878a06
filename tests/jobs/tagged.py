"""Test job: JSON pass-through that records which slot (and process) handled each record.

WEIR_TEST_IN / WEIR_TEST_OUT name the topics; WEIR_TEST_SLEEP_MS makes the map
wait per record (simulated I/O that releases the GIL); WEIR_TEST_FAIL_ON makes
records whose ``n`` equals it raise in the map.
"""

import os
import threading
import time

from weir import Job

SLEEP = float(os.environ.get("WEIR_TEST_SLEEP_MS", "0")) / 1000
FAIL_ON = int(os.environ.get("WEIR_TEST_FAIL_ON", "-1"))
PID = os.getpid()


def tag(record: dict) -> dict:
    if SLEEP:
        time.sleep(SLEEP)
    if record.get("n") == FAIL_ON:
        raise ValueError(f"record {FAIL_ON} is poisoned")
    return {**record, "slot": threading.current_thread().name, "pid": PID}


job = Job(os.environ.get("WEIR_TEST_JOB", "tagged"))
job.source(os.environ["WEIR_TEST_IN"], value="json").map(tag).sink(os.environ["WEIR_TEST_OUT"])
