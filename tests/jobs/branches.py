"""Test job: a branching stream with flat_map, filter and a key_by exchange.

Each input ``{"n": i, "words": [...]}`` yields one output per word on
WEIR_TEST_OUT (keyed by the word, routed through a key_by exchange) and, for
even ``n``, one record on WEIR_TEST_EVENS.
"""

import os
import threading

from weir import Job

job = Job("branches")
src = job.source(os.environ["WEIR_TEST_IN"])
(
    src.flat_map(lambda r: [{"n": r["n"], "word": w} for w in r["words"]])
    .key_by(lambda r: r["word"])
    .map(lambda r: {**r, "slot": threading.current_thread().name})
    .sink(os.environ["WEIR_TEST_OUT"])
)
src.filter(lambda r: r["n"] % 2 == 0).rebalance().sink(os.environ["WEIR_TEST_EVENS"])
