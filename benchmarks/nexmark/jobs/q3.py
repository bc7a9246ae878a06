"""Nexmark q3 on Weir: local item suggestion (see benchmarks/nexmark/spec.py).

Auctions in category 10 keyed by seller, persons in OR/ID/CA keyed by id, joined
as they arrive: an interval join whose bound (a day) spans any run, so every
auction meets its seller whichever came first (persons keep no more than they
must: the run ends long before the watermark could drop them).
"""

import os

from benchmarks.nexmark.spec import (
    OUT_OF_ORDERNESS_S,
    Q3_WITHIN_S,
    q3_auction,
    q3_person,
    q3_row,
)
from weir import Job

job = Job("nexmark-q3")
events = job.source(
    os.environ["NEXMARK_IN"],
    value="json",
    timestamp=lambda r: r["ts"],
    max_out_of_orderness=OUT_OF_ORDERNESS_S,
)
auctions = events.filter(q3_auction).key_by(lambda a: a["seller"], name="by-seller")
persons = events.filter(q3_person).key_by(lambda p: p["id"], name="by-id")
(
    auctions.interval_join(
        persons, lower=-Q3_WITHIN_S, upper=Q3_WITHIN_S, fn=q3_row, name="q3"
    ).sink(os.environ["NEXMARK_OUT"], value="json")
)
