"""Test job: running aggregates per sensor (the record key)."""

import os

from weir import Job

job = Job("sensor-aggregate")
(
    job.source(os.environ["WEIR_TEST_IN"])
    .key_by()
    .aggregate(
        count="count",
        total=("sum", "value"),
        low=("min", "value"),
        high=("max", "value"),
        mean=("mean", "value"),
        name="stats",
    )
    .sink(os.environ["WEIR_TEST_OUT"])
)
