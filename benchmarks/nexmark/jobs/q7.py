"""Nexmark q7 on Weir: highest bid per tumbling window (see benchmarks/nexmark/spec.py).

The highest bid per auction and window first (bids are keyed by auction in
Kafka, so nothing moves), then the highest per window as a running reduce
keyed by window, behind a repartition topic.
"""

import os

from benchmarks.nexmark.spec import OUT_OF_ORDERNESS_S, Q7_SIZE_MS, higher_bid, is_bid
from weir import Job, Tumbling

job = Job("nexmark-q7")
(
    job.source(
        os.environ["NEXMARK_IN"],
        value="json",
        timestamp=lambda r: r["ts"],
        max_out_of_orderness=OUT_OF_ORDERNESS_S,
    )
    .filter(is_bid)
    .map(lambda r: {"auction": r["auction"], "bidder": r["bidder"], "price": r["price"]})
    .key_by()
    .window(Tumbling(seconds=Q7_SIZE_MS / 1000))
    .reduce(higher_bid)
    .map(
        lambda r: {
            "window_start": r["window_start"],
            "window_end": r["window_end"],
            "auction": r["auction"],
            "bidder": r["bidder"],
            "price": r["price"],
        }
    )
    .key_by(lambda r: r["window_end"])
    .reduce(higher_bid)
    .sink(os.environ["NEXMARK_OUT"], value="json")
)
