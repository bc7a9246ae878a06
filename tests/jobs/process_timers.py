"""Test job: a keyed process function with value, list and map state and both timer kinds.

Per key (the Kafka record key) it counts records in value state, keeps the
last three ``n`` in list state and the count per ``kind`` in map state; it
emits ``{"key", "n", "count"}`` for every record, an event-time summary when
the watermark passes ``ts + 1000`` of the key's first record, and a
processing-time "heartbeat" 300 ms after the key was first seen.
``WEIR_TEST_IDLE`` sets the source's idle_timeout (default 1 s).
"""

import os

from weir import Job, KeyedProcessFunction


class Summarize(KeyedProcessFunction):
    def process_element(self, value, ctx):
        count = ctx.value_state("count")
        n = count.value(0) + 1
        count.update(n)
        recent = ctx.list_state("recent")
        recent.update([*recent.get(), value["n"]][-3:])
        kinds = ctx.map_state("kinds")
        kinds.put(value["kind"], kinds.get(value["kind"], 0) + 1)
        if n == 1:
            ctx.timers.register_event_time(value["ts"] + 1000)
            ctx.timers.register_processing_time(ctx.timers.processing_time + 300)
        if value.get("boom"):
            raise ValueError("boom")
        ctx.emit({"key": ctx.key, "n": value["n"], "count": n})

    def on_timer(self, timestamp, ctx):
        ctx.emit(
            {
                "key": ctx.key,
                "timer": ctx.time_domain,
                "count": ctx.value_state("count").value(0),
                "recent": ctx.list_state("recent").get(),
                "kinds": dict(ctx.map_state("kinds").items()),
            }
        )


job = Job("process-timers")
(
    job.source(
        os.environ["WEIR_TEST_IN"],
        timestamp=lambda r: r["ts"],
        idle_timeout=float(os.environ.get("WEIR_TEST_IDLE", "1.0")),
    )
    .key_by()
    .process(Summarize(), name="summarize")
    .sink(os.environ["WEIR_TEST_OUT"])
)
