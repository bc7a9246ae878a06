"""Nexmark q5 on Weir: hot items (see benchmarks/nexmark/spec.py).

Bids are keyed by auction in Kafka already, so ``key_by()`` moves nothing; the
per-window maximum is a running reduce keyed by window, behind a repartition topic.
"""

import os

from benchmarks.nexmark.spec import (
    OUT_OF_ORDERNESS_S,
    Q5_SIZE_MS,
    Q5_SLIDE_MS,
    is_bid,
    more_bids,
)
from weir import Job, Sliding

job = Job("nexmark-q5")
(
    job.source(
        os.environ["NEXMARK_IN"],
        value="json",
        timestamp=lambda r: r["ts"],
        max_out_of_orderness=OUT_OF_ORDERNESS_S,
    )
    .filter(is_bid)
    .key_by()
    .window(Sliding(seconds=Q5_SIZE_MS / 1000, every=Q5_SLIDE_MS / 1000))
    .aggregate(count="count")
    .map(
        lambda r: {
            "window_start": r["window_start"],
            "window_end": r["window_end"],
            "auction": int(r["key"]),
            "count": r["count"],
        }
    )
    .key_by(lambda r: r["window_end"])
    .reduce(more_bids)
    .sink(os.environ["NEXMARK_OUT"], value="json")
)
