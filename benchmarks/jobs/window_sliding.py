"""Benchmark job: a sliding-window aggregate (count and mean) per Kafka record key.

Records are ``{"id", "v", "tag", "ts"}`` (``ts`` epoch ms); each window result is
``{"key", "window_start", "window_end", "count", "mean"}``. Knobs from the
environment: ``BENCH_IN``, ``BENCH_OUT``, ``BENCH_WINDOW_S`` (size, default 10),
``BENCH_SLIDE_S`` (slide, default 1), ``BENCH_OOO_S`` (max out-of-orderness,
default 0), ``BENCH_IDLE_S`` (idle timeout, default none).
"""

import os

from weir import Job, Sliding

_idle = os.environ.get("BENCH_IDLE_S")

job = Job("bench-window-sliding")
(
    job.source(
        os.environ["BENCH_IN"],
        value="json",
        timestamp=lambda r: r["ts"],
        max_out_of_orderness=float(os.environ.get("BENCH_OOO_S", "0")),
        idle_timeout=float(_idle) if _idle else None,
    )
    .key_by()
    .window(
        Sliding(
            seconds=float(os.environ.get("BENCH_WINDOW_S", "10")),
            every=float(os.environ.get("BENCH_SLIDE_S", "1")),
        )
    )
    .aggregate(count="count", mean=("mean", "v"), name="sliding")
    .sink(os.environ["BENCH_OUT"], value="json")
)
