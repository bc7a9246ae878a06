"""Example job: per-sensor statistics over 10-second event-time windows.

Input (topic ``sensors``): ``{"tag": "sensor1", "value": 32.3, "ts": 1700000000000}``
Output (topic ``sensor-stats``), one record per sensor and window once the
watermark passes the window's end::

    {"key": "sensor1", "window_start": ..., "window_end": ..., "count": 12,
     "mean": 30.1, "min": 24.9, "max": 41.0}

Readings may arrive up to 2 s out of order; a sensor silent for 5 s no longer
holds the others' windows back.
"""

from weir import Job, Tumbling

job = Job("sensor-stats")
(
    job.source(
        "sensors",
        value="json",
        timestamp=lambda r: r["ts"],
        max_out_of_orderness=2.0,
        idle_timeout=5.0,
    )
    .filter(lambda r: isinstance(r.get("value"), int | float))
    .key_by(lambda r: r["tag"], name="by-tag")  # names its repartition topic
    .window(Tumbling(seconds=10))
    .aggregate(
        count="count",
        mean=("mean", "value"),
        min=("min", "value"),
        max=("max", "value"),
        name="stats",  # a stable name: the window's state is found by it
    )
    .sink("sensor-stats", value="json")
)
