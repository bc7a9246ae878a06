"""Test job: orders joined with a customers table as of event time, inner and left.

Orders ``{"id", "customer", "ts"}`` are keyed by customer; customers
``{"city", "v", "ts"}`` are a table keyed by the Kafka record key (the customer), a
tombstone deleting one. Both joins share the stream and the table and write
``{"order", "customer", "city", "v"}`` (city and v None when the customer had no
value at the order's time). The join topics get WEIR_TEST_PARTITIONS partitions.
"""

import os

from weir import Job

IDLE = float(os.environ.get("WEIR_TEST_IDLE", "60"))
PARTITIONS = int(os.environ.get("WEIR_TEST_PARTITIONS", "2"))


def row(order: dict, customer: dict | None) -> dict:
    return {
        "order": order["id"],
        "customer": order["customer"],
        "city": None if customer is None else customer["city"],
        "v": None if customer is None else customer["v"],
    }


job = Job(os.environ.get("WEIR_TEST_JOB", "table-join"))
customers = job.table(os.environ["WEIR_TEST_TABLE"], timestamp=lambda c: c["ts"], idle_timeout=IDLE)
orders = job.source(
    os.environ["WEIR_TEST_IN"],
    timestamp=lambda o: o["ts"],
    max_out_of_orderness=0.5,
    idle_timeout=IDLE,
).key_by(lambda o: o["customer"], name="by-customer")
orders.join_table(customers, row, how="inner", partitions=PARTITIONS, name="inner").sink(
    os.environ["WEIR_TEST_OUT_INNER"]
)
orders.join_table(customers, row, how="left", partitions=PARTITIONS, name="left").sink(
    os.environ["WEIR_TEST_OUT_LEFT"]
)
