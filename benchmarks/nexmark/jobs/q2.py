"""Nexmark q2 on Weir: selection of bids by auction id (see benchmarks/nexmark/spec.py)."""

import os

from benchmarks.nexmark.spec import q2_filter, q2_project
from weir import Job

job = Job("nexmark-q2")
(
    job.source(os.environ["NEXMARK_IN"], value="json")
    .filter(q2_filter)
    .map(q2_project)
    .sink(os.environ["NEXMARK_OUT"], value="json")
)
