"""Test job: a map that blocks forever on the record whose ``n`` is ``WEIR_TEST_HANG_AT``
(a call to a service that never answers); every other record passes through. With
``WEIR_TEST_STUBBORN=1`` the function also swallows whatever interrupts it and waits
again (code that catches ``BaseException``)."""

import os
import threading

from weir import Job

HANG_AT = int(os.environ["WEIR_TEST_HANG_AT"])
STUBBORN = os.environ.get("WEIR_TEST_STUBBORN") == "1"
NEVER = threading.Event()


def lookup(record: dict) -> dict:
    if record["n"] == HANG_AT:
        while True:
            try:
                NEVER.wait()
            except BaseException:
                if not STUBBORN:
                    raise
    return record


job = Job("hangs")
(
    job.source(os.environ["WEIR_TEST_IN"])
    .map(lookup, name="slow-lookup")
    .sink(os.environ["WEIR_TEST_OUT"])
)
