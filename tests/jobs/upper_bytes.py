"""Test job: raw bytes in, upper-cased bytes out; drops empty values."""

import os

from weir import Job

job = Job("upper-bytes")
(
    job.source(os.environ["WEIR_TEST_IN"], value="bytes")
    .filter(lambda b: len(b) > 0)
    .map(bytes.upper)
    .sink(os.environ["WEIR_TEST_OUT"], value="bytes")
)
