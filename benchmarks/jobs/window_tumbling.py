"""Benchmark job: a tumbling-window count per Kafka record key, in event time.

Records are ``{"id", "v", "tag", "ts"}`` (``ts`` epoch ms); each window result is
``{"key", "window_start", "window_end", "count"}``. Knobs from the environment:
``BENCH_IN``, ``BENCH_OUT``, ``BENCH_WINDOW_S`` (window size, default 1),
``BENCH_OOO_S`` (max out-of-orderness, default 0), ``BENCH_IDLE_S`` (idle
timeout, default none), ``BENCH_KEY_BY=tag`` (key by ``r["tag"]`` with ``key_by(fn)``,
through the repartition topic ``<group>.by-tag.repartition``, instead of by the
record key, which is the same tag).
"""

import os

from weir import Job, Tumbling

_idle = os.environ.get("BENCH_IDLE_S")

job = Job("bench-window-tumbling")
readings = job.source(
    os.environ["BENCH_IN"],
    value="json",
    timestamp=lambda r: r["ts"],
    max_out_of_orderness=float(os.environ.get("BENCH_OOO_S", "0")),
    idle_timeout=float(_idle) if _idle else None,
)
if os.environ.get("BENCH_KEY_BY") == "tag":
    keyed = readings.key_by(lambda r: r["tag"], name="by-tag")
else:
    keyed = readings.key_by()
(
    keyed.window(Tumbling(seconds=float(os.environ.get("BENCH_WINDOW_S", "1"))))
    .aggregate(count="count", name="tumbling")
    .sink(os.environ["BENCH_OUT"], value="json")
)
