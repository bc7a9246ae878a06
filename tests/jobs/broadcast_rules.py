"""Test job: rules broadcast to a keyed stream of events (Flink's pattern example).

Rules ``{"name", "first", "second"}`` (or ``{"name", "remove": true}``) come from
WEIR_TEST_RULES; events ``{"n", "user", "shape"}`` keyed by user from WEIR_TEST_IN.
For every event whose user's previous shape is a rule's ``first`` and whose shape
is its ``second``, the job emits ``{"user", "rule", "n"}``. The operator's topic
gets WEIR_TEST_PARTITIONS partitions.
"""

import os

from weir import Job, KeyedBroadcastProcessFunction


class Matcher(KeyedBroadcastProcessFunction):
    def process_broadcast_element(self, rule, ctx):
        rules = ctx.broadcast_state("rules")
        if rule.get("remove"):
            rules.remove(rule["name"])
        else:
            rules.put(rule["name"], {"first": rule["first"], "second": rule["second"]})

    def process_element(self, event, ctx):
        last = ctx.value_state("last")
        for name, rule in sorted(ctx.broadcast_state("rules").items()):
            if last.value() == rule["first"] and event["shape"] == rule["second"]:
                ctx.emit({"user": ctx.key, "rule": name, "n": event["n"]})
        last.update(event["shape"])


job = Job(os.environ.get("WEIR_TEST_JOB", "broadcast-rules"))
rules = job.source(os.environ["WEIR_TEST_RULES"]).broadcast_state()
(
    job.source(os.environ["WEIR_TEST_IN"])
    .key_by()
    .connect(rules)
    .process(Matcher(), partitions=int(os.environ.get("WEIR_TEST_PARTITIONS", "2")), name="match")
    .sink(os.environ["WEIR_TEST_OUT"])
)
