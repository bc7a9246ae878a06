"""Stream-table join on a real broker, compared with DuckDB's ASOF join.

A backlog of orders (one topic) and customer updates and deletes (a compacted
topic, tombstones included) interleaved in event time; two workers run an inner
and a left join of the orders with the customers table (tests/jobs/table_join.py),
one of them is killed (-9) and restarted mid-run. Every row, read_committed, is the
one DuckDB's ``ASOF LEFT JOIN ... ON o.customer = c.customer AND o.ts >= c.ts``
gives over the same records — README's "current" — each once.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter

import duckdb
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.kafka_fixture import committed_reached, consume_all
from tests.waiting import wait_for
from tests.workers import Workers, job_env, metric
from weir.service.partitioner import partition_for

T0 = 1_700_000_000_000
PARTITIONS = 2  # of each join's topic (WEIR_TEST_PARTITIONS)
SESSION = [
    "--kafka", "consumer.session.timeout.ms=6000",
    "--kafka", "consumer.heartbeat.interval.ms=1000",
]  # fmt: skip


def timeline(seed: int, orders: int, customers: int) -> tuple[list[dict], list[tuple]]:
    """Orders and customer versions in event time: every customer starts with a city
    (some a little after the first orders), then about one update or delete per 8
    orders. A customer version is ``(customer, ts, value or None)``."""
    rng = random.Random(seed)
    names = [f"c{i}" for i in range(customers)]
    versions: list[tuple] = [(c, T0 + rng.randrange(0, 400), None) for c in names]
    versions = [(c, ts, {"city": f"city{rng.randrange(9)}", "v": 0}) for c, ts, _ in versions]
    out: list[dict] = []
    ts = T0
    count = Counter()
    for n in range(orders):
        ts += rng.randrange(1, 4)
        out.append({"id": n, "customer": rng.choice(names), "ts": ts})
        if rng.random() < 0.125:
            ts += 1
            c = rng.choice(names)
            count[c] += 1
            value = (
                None if rng.random() < 0.2 else {"city": f"city{rng.randrange(9)}", "v": count[c]}
            )
            versions.append((c, ts, value))
    versions.sort(key=lambda v: v[1])
    return out, versions


def closers(end: int) -> tuple[list[dict], list[tuple]]:
    """An order and a customer version far past ``end`` for a key of every partition of
    the join topics: both sides' watermarks then pass every real order, so the last
    ones are emitted without waiting for idleness. Closer orders (id < 0) wait until
    every input has gone idle, if the run lasts that long: left out of the comparison."""
    keys: dict[int, str] = {}
    i = 0
    while len(keys) < PARTITIONS:
        key = f"zz-closer-{i}"
        keys.setdefault(partition_for(key.encode(), PARTITIONS), key)
        i += 1
    orders = [{"id": -1 - p, "customer": k, "ts": end + 60_000} for p, k in keys.items()]
    versions = [(k, end + 60_000, {"city": "nowhere", "v": 0}) for k in keys.values()]
    return orders, versions


def produce(
    bootstrap: str,
    orders_topic: str,
    table: str,
    orders: list,
    versions: list,
    table_partition: int | None = None,
) -> None:
    """The orders by customer; the customer versions by customer, or all into
    ``table_partition``."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    where = {} if table_partition is None else {"partition": table_partition}
    for o in orders:
        producer.produce(orders_topic, orjson.dumps(o), o["customer"].encode())
        producer.poll(0)
    for c, ts, value in versions:
        data = None if value is None else orjson.dumps({**value, "ts": ts})
        producer.produce(table, data, c.encode(), timestamp=ts, **where)
        producer.poll(0)
    assert producer.flush(60) == 0


def duckdb_rows(orders: list[dict], versions: list[tuple]) -> dict[str, Counter]:
    """(order, city, v) rows of the inner and the left ASOF join, by DuckDB."""
    con = duckdb.connect()
    try:
        con.execute("CREATE TABLE orders (id BIGINT, customer VARCHAR, ts BIGINT)")
        con.executemany("INSERT INTO orders VALUES (?, ?, ?)",
                        [(o["id"], o["customer"], o["ts"]) for o in orders])  # fmt: skip
        con.execute("CREATE TABLE customers (customer VARCHAR, ts BIGINT, city VARCHAR, v INT)")
        con.executemany(
            "INSERT INTO customers VALUES (?, ?, ?, ?)",
            [(c, ts, value and value["city"], value and value["v"]) for c, ts, value in versions],
        )
        left = con.execute(
            "SELECT o.id, c.city, c.v FROM orders o ASOF LEFT JOIN customers c"
            " ON o.customer = c.customer AND o.ts >= c.ts"
        ).fetchall()
    finally:
        con.close()
    return {
        "left": Counter(left),
        "inner": Counter(r for r in left if r[1] is not None),  # a delete: no value
    }


@pytest.mark.slow
def test_each_order_joins_the_customer_current_at_its_event_time_through_a_kill(
    kafka_bootstrap, new_topic, tmp_path
):
    orders, versions = timeline(seed=7, orders=8_000, customers=60)
    end_orders, end_versions = closers(orders[-1]["ts"])
    src = new_topic(partitions=1)
    table = new_topic(partitions=1, config={"cleanup.policy": "compact"})
    out_inner, out_left = new_topic(partitions=2), new_topic(partitions=2)
    produce(kafka_bootstrap, src, table, orders + end_orders, versions + end_versions)
    want = duckdb_rows(orders, versions)
    assert 0 < sum(want["inner"].values()) < len(orders), "some orders have no customer"

    group = f"tj-{uuid.uuid4().hex[:10]}"
    env = job_env(in_=src, table=table, out_inner=out_inner, out_left=out_left,
                  partitions=PARTITIONS)  # fmt: skip
    args = ["--state-dir", str(tmp_path / "state"), "--checkpoint-interval-ms", "200",
            "--slots", "2", *SESSION]  # fmt: skip
    workers = Workers("table_join.py", kafka_bootstrap, group, env, args, tmp_path / "logs")

    def emitted(topic: str) -> int:
        return len(consume_all(kafka_bootstrap, topic, None, 30, partial=True))

    readers = {  # one client per isolation level, for the end offsets a timeout shows
        level: Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "ends",
                         "isolation.level": level})
        for level in ("read_committed", "read_uncommitted")
    }  # fmt: skip
    try:
        for worker_id in ("w1", "w2"):
            workers.start(worker_id)
        wait_for(lambda: emitted(out_left) >= len(orders) // 4, 120, "a quarter of the rows",
                 every=0.5, check=workers.check_alive, detail=workers.logs_tail)  # fmt: skip
        workers.kill("w2")
        workers.start("w2", ["--slots", "3"]).wait_running(60, partitions=False)  # another count

        def progress() -> str:
            """Rows so far, and what each worker says of its time and its partitions."""
            rows = {how: f"{emitted(t)}/{want[how].total()}"
                    for how, t in (("inner", out_inner), ("left", out_left))}  # fmt: skip
            said = {}
            for worker_id, worker in workers.live.items():
                st = worker.status() or {}
                said[worker_id] = {
                    "late": metric(worker.metrics(), "weir_records_late_total"),
                    **{k: st.get(k) for k in ("watermark", "watermarks", "partitions",
                                              "paused", "restoring", "lag")},
                }  # fmt: skip
            ends = {how: {p: (end_of(t, p, "read_committed"), end_of(t, p, "read_uncommitted"))
                          for p in range(2)}
                    for how, t in (("inner", out_inner), ("left", out_left))}  # fmt: skip
            return f": rows {rows}, ends (LSO, HW) {ends}, workers {said}{workers.logs_tail()}"

        def end_of(topic: str, partition: int, isolation: str) -> int:
            return readers[isolation].get_watermark_offsets(TopicPartition(topic, partition), 10)[1]

        # A restarted worker's join may wait for a quiet side's idle_timeout: wait for both.
        for topic, how in ((out_left, "left"), (out_inner, "inner")):
            wait_for(lambda topic=topic, how=how: emitted(topic) >= want[how].total(), 240,
                     f"every {how} row", every=2, check=workers.check_alive,
                     detail=progress)  # fmt: skip
        workers.stop_all()
    finally:
        workers.close()
        for reader in readers.values():
            reader.close()

    for how, topic in (("inner", out_inner), ("left", out_left)):
        rows = consume_all(kafka_bootstrap, topic, None, 60)
        got = Counter(
            (r["value"]["order"], r["value"]["city"], r["value"]["v"])
            for r in rows
            if r["value"]["order"] >= 0  # a closer emitted once every input went idle
        )
        missing, extra = want[how] - got, got - want[how]
        assert not missing and not extra, (
            f"{how}: {len(rows)} rows, {sum(missing.values())} missing (e.g."
            f" {list(missing)[:3]}), {sum(extra.values())} unexpected (e.g. {list(extra)[:3]})"
        )


def test_a_worker_given_join_partitions_read_to_their_end_resumes_their_clocks(
    kafka_bootstrap, new_topic, tmp_path
):
    """A worker reads every record of the join topics and commits them, but its rows
    wait: the table has a partition that never shows a record, which holds the table
    side until its idle_timeout (20 s) has passed since the worker first read the
    partition. Killed (-9) before that, nothing has been joined. The worker after it
    reads no record there — all are committed — yet must join every row from the clocks
    the first one kept in state (issue #14: it knew no side and its rows waited for good)."""
    orders, versions = timeline(seed=11, orders=400, customers=20)
    src = new_topic(partitions=1)
    table = new_topic(partitions=2, config={"cleanup.policy": "compact"})
    out_inner, out_left = new_topic(partitions=2), new_topic(partitions=2)
    produce(kafka_bootstrap, src, table, orders, versions, table_partition=0)
    want = duckdb_rows(orders, versions)

    group = f"tj-{uuid.uuid4().hex[:10]}"
    env = job_env(in_=src, table=table, out_inner=out_inner, out_left=out_left,
                  partitions=PARTITIONS, idle="20")  # fmt: skip
    args = ["--state-dir", str(tmp_path / "state"), "--checkpoint-interval-ms", "200",
            "--slots", "2", *SESSION]  # fmt: skip
    workers = Workers("table_join.py", kafka_bootstrap, group, env, args, tmp_path / "logs")
    joins = [f"{group}.{name}.repartition" for name in ("inner", "left")]

    def joins_committed() -> bool:
        """Every record of the join topics committed, and of the orders."""
        return committed_reached(kafka_bootstrap, group, src) and all(
            committed_reached(kafka_bootstrap, group, topic, transactional=True) for topic in joins
        )

    try:
        workers.start("w1")
        wait_for(joins_committed, 60, "the join topics committed to their end", every=0.5,
                 check=workers.check_alive, detail=workers.logs_tail)  # fmt: skip
        workers.kill("w1")
        early = len(consume_all(kafka_bootstrap, out_left, None, 30))
        assert early == 0, f"{early} rows joined before the table side settled: the test is void"
        workers.start("w1")
        for topic, how in ((out_left, "left"), (out_inner, "inner")):
            wait_for(lambda topic=topic, how=how: len(consume_all(
                         kafka_bootstrap, topic, None, 30, partial=True)) >= want[how].total(),
                     90, f"every {how} row from the restored clocks", every=2,
                     check=workers.check_alive, detail=workers.logs_tail)  # fmt: skip
        workers.stop_all()
    finally:
        workers.close()

    for how, topic in (("inner", out_inner), ("left", out_left)):
        rows = consume_all(kafka_bootstrap, topic, None, 60)
        got = Counter((r["value"]["order"], r["value"]["city"], r["value"]["v"]) for r in rows)
        assert got == want[how], f"{how}: {len(rows)} rows, want {want[how].total()}"
