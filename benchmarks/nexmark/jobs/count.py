"""Running count of bids per auction on Weir (see benchmarks/nexmark/spec.py).

Keyed by the Kafka record key (the auction id), so no repartition; the count
lives in Weir's keyed state with a changelog, committed with the outputs.
"""

import os

from benchmarks.nexmark.spec import is_bid
from weir import Job

job = Job("nexmark-count")
(
    job.source(os.environ["NEXMARK_IN"], value="json")
    .filter(is_bid)
    .key_by()
    .aggregate(count="count", ts=("max", "ts"))
    .sink(os.environ["NEXMARK_OUT"], value="json")
)
