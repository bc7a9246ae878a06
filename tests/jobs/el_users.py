"""Test job (elasticity): keyed state whose key is not the Kafka record key.

Input ``{"n": n, "user": u, "amount": a}`` records are keyed by anything (a random
id); the job keys them by ``user`` with ``key_by(fn)``, which routes them through the
repartition topic ``<group>.by-user.repartition`` (``WEIR_TEST_PARTITIONS``
partitions, default the source's), so each user is owned by exactly one worker.

WEIR_TEST_KIND:
- ``reduce`` (default): a running reduce emitting ``{"key": u, "count": c, "last": n,
  "total": t}`` — ``c`` counts the user's records, ``last`` is the ``n`` of the record
  that made it ``c``, so every output names the one input it derives from;
- ``aggregate``: ``aggregate(count="count", total=("sum", "amount"))``.
"""

import os

from weir import Job

IN, OUT = os.environ["WEIR_TEST_IN"], os.environ["WEIR_TEST_OUT"]
PARTITIONS = (
    int(os.environ["WEIR_TEST_PARTITIONS"]) if os.environ.get("WEIR_TEST_PARTITIONS") else None
)

job = Job(os.environ.get("WEIR_TEST_JOB", "el-users"))
by_user = job.source(IN).key_by(lambda r: r["user"], partitions=PARTITIONS, name="by-user")
if os.environ.get("WEIR_TEST_KIND", "reduce") == "aggregate":
    by_user.aggregate(count="count", total=("sum", "amount"), name="totals").sink(OUT)
else:
    (
        by_user.map(lambda r: {"count": 1, "last": r["n"], "total": r["amount"]})
        .reduce(
            lambda acc, r: {
                "count": acc["count"] + 1,
                "last": r["last"],
                "total": acc["total"] + r["total"],
            },
            name="counts",
        )
        .sink(OUT)
    )
