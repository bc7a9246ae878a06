"""Nexmark q8 on Weir: monitor new users (see benchmarks/nexmark/spec.py).

Persons keyed by id and auctions keyed by seller, joined per 10 s tumbling window:
a window with both gives one row per person (a person registers once).
"""

import os

from benchmarks.nexmark.spec import OUT_OF_ORDERNESS_S, Q8_SIZE_MS, is_auction, is_person, q8_rows
from weir import Job, Tumbling

job = Job("nexmark-q8")
events = job.source(
    os.environ["NEXMARK_IN"],
    value="json",
    timestamp=lambda r: r["ts"],
    max_out_of_orderness=OUT_OF_ORDERNESS_S,
)
persons = events.filter(is_person).key_by(lambda p: p["id"], name="by-id")
auctions = events.filter(is_auction).key_by(lambda a: a["seller"], name="by-seller")
(
    persons.join(auctions, how="inner")
    .window(Tumbling(seconds=Q8_SIZE_MS / 1000))
    .process(lambda key, window, people, _auctions: q8_rows(window, people), name="q8")
    .sink(os.environ["NEXMARK_OUT"], value="json")
)
