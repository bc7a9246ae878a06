"""Test job: a full-window function with a bug that raises for key "bad" when the
window fires (not a bad record: the restart strategy handles it)."""

import os

from weir import Job, Tumbling


def summarize(key, window, elements):
    if key == "bad":
        raise RuntimeError("bug in summarize")
    return {"n": len(elements)}


job = Job("window-bug")
(
    job.source(os.environ["WEIR_TEST_IN"], timestamp=lambda r: r["ts"], idle_timeout=0.5)
    .key_by()
    .window(Tumbling(seconds=1))
    .process(summarize, name="summarize")
    .sink(os.environ["WEIR_TEST_OUT"])
)
