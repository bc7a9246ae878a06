"""Test job: keyed state that some records would make unstorable.

Readings ``{"ts", "value", "pad"?}`` keyed by the Kafka record key feed two branches:
tumbling windows of 10 s summing ``int(value)`` (a value of 2**70 cannot be stored as
JSON), and a process function appending each reading's ``pad`` (or ``""``) to a list
state and emitting ``{"key", "n"}`` with the list's new length (large pads grow it past
what the changelog accepts).
"""

import os

from weir import Job, KeyedProcessFunction, Tumbling


class Append(KeyedProcessFunction):
    def process_element(self, value, ctx):
        items = ctx.list_state("items")
        items.add(value.get("pad", ""))
        ctx.emit({"key": ctx.key, "n": len(items.get())})


job = Job("unstorable")
readings = job.source(os.environ["WEIR_TEST_IN"], timestamp=lambda r: r["ts"], idle_timeout=1.0)
(
    readings.key_by()
    .window(Tumbling(seconds=10))
    .aggregate(count="count", sum=("sum", lambda r: int(r["value"])), name="sums")
    .sink(os.environ["WEIR_TEST_WINDOWS"])
)
readings.key_by().process(Append(), name="append").sink(os.environ["WEIR_TEST_LISTS"])
