"""Test job: readings keyed by ``key_by(lambda r: r["tag"])`` into tumbling, sliding and
session windows at once — one source written into three repartition topics, a window
behind each (the path of examples/sensor_stats.py, three times over).

WEIR_TEST_IN names the readings' topic; WEIR_TEST_OUT_<KIND> and WEIR_TEST_LATE_<KIND>
each window's output and late topics (KIND: TUMBLING, SLIDING, SESSION);
WEIR_TEST_REPARTITIONS the partitions of the repartition topics (default: the
source's); WEIR_TEST_OOO and WEIR_TEST_IDLE the source's out-of-orderness and idle
timeout in seconds. Each window's aggregate is named after its kind (the
``operator`` label of its metrics).
"""

import os

from weir import Job, Session, Sliding, Tumbling

SPECS = {
    "tumbling": Tumbling(seconds=10),
    "sliding": Sliding(seconds=10, every=2),
    "session": Session(gap=5),
}

job = Job("by-tag")
readings = job.source(
    os.environ["WEIR_TEST_IN"],
    timestamp=lambda r: r["ts"],
    max_out_of_orderness=float(os.environ.get("WEIR_TEST_OOO", "2")),
    idle_timeout=float(os.environ.get("WEIR_TEST_IDLE", "1")),
)
partitions = (
    int(os.environ["WEIR_TEST_REPARTITIONS"]) if "WEIR_TEST_REPARTITIONS" in os.environ else None
)
for kind, spec in SPECS.items():
    (
        readings.key_by(lambda r: r["tag"], partitions=partitions, name=f"by-tag-{kind}")
        .window(spec, late_topic=os.environ[f"WEIR_TEST_LATE_{kind.upper()}"])
        .aggregate(
            count="count",
            sum=("sum", "value"),
            min=("min", "value"),
            max=("max", "value"),
            mean=("mean", "value"),
            name=kind,
        )
        .sink(os.environ[f"WEIR_TEST_OUT_{kind.upper()}"])
    )
