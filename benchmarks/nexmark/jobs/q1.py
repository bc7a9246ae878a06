"""Nexmark q1 on Weir: currency conversion of bids (see benchmarks/nexmark/spec.py)."""

import os

from benchmarks.nexmark.spec import is_bid, q1_map
from weir import Job

job = Job("nexmark-q1")
(
    job.source(os.environ["NEXMARK_IN"], value="json")
    .filter(is_bid)
    .map(q1_map)
    .sink(os.environ["NEXMARK_OUT"], value="json")
)
