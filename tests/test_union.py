"""Union of two topics on a real broker: every record of both counted exactly once,
through a kill -9 and restart of one of two workers mid-run.

The job (tests/jobs/union_count.py) merges topic A and, behind a rebalance, topic B,
and counts per key behind a repartition topic. Inputs carry numbers ``n`` unique
over both topics; exactly once means, per key, the committed counts are exactly
1..N_k, each once, and the inputs they name are exactly that key's ``n``\\ s (the
order between the two topics is not defined, so the order of ``n``\\ s is not checked).
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter, defaultdict

import orjson
from confluent_kafka import Producer

from tests.feeding import Feeder
from tests.kafka_fixture import committed_reached, consume_all
from tests.waiting import wait_for
from tests.workers import Workers, job_env, metric

SESSION = [
    "--kafka", "consumer.session.timeout.ms=6000",
    "--kafka", "consumer.heartbeat.interval.ms=1000",
]  # fmt: skip


def test_union_of_two_topics_counts_every_record_once_through_a_kill(
    kafka_bootstrap, new_topic, tmp_path
):
    a, b, out = new_topic(partitions=3), new_topic(partitions=2), new_topic(partitions=3)
    rng = random.Random(14)
    per_topic, nkeys, rate = 6_000, 300, 600
    records = [{"n": n, "k": f"k{rng.randrange(nkeys)}"} for n in range(2 * per_topic)]
    feed_a = Feeder(kafka_bootstrap, a, records[:per_topic], rate, key=lambda r: r["k"])
    feed_b = Feeder(kafka_bootstrap, b, records[per_topic:], rate, key=lambda r: r["k"])
    group = f"union-{uuid.uuid4().hex[:10]}"
    args = ["--state-dir", str(tmp_path / "state"), "--checkpoint-interval-ms", "200",
            "--slots", "2", *SESSION]  # fmt: skip
    env = job_env(in_a=a, in_b=b, out=out)
    workers = Workers("union_count.py", kafka_bootstrap, group, env, args, tmp_path / "logs")
    try:
        for worker_id in ("w1", "w2"):
            workers.start(worker_id)
        for worker in workers.live.values():
            worker.wait_running(60, partitions=False)
        feed_a.start()
        feed_b.start()
        time.sleep(per_topic / rate / 2)
        workers.kill("w2")
        workers.start("w2").wait_running(60, partitions=False)
        feed_a.finish()
        feed_b.finish()
        wait_for(
            lambda: len(consume_all(kafka_bootstrap, out, None, 30, partial=True)) >= len(records),
            180,
            "every record counted",
            every=2,
            check=workers.check_alive,
            detail=workers.logs_tail,
        )
        workers.stop_all()
    finally:
        feed_a.halt()
        feed_b.halt()
        workers.close()
    outputs = consume_all(kafka_bootstrap, out, None, 60)
    by_key: dict[str, list[dict]] = defaultdict(list)
    for r in outputs:
        by_key[r["value"]["key"]].append(r["value"])
    expected: dict[str, set[int]] = defaultdict(set)
    for r in records:
        expected[r["k"]].add(r["n"])
    wrong = {
        k: (sorted(v["count"] for v in by_key.get(k, []))[:5], len(ns))
        for k, ns in expected.items()
        if sorted(v["count"] for v in by_key.get(k, [])) != list(range(1, len(ns) + 1))
        or {v["last"] for v in by_key.get(k, [])} != ns
    }
    assert len(outputs) == len(records), f"{len(outputs)} outputs for {len(records)} inputs"
    assert not wrong, f"{len(wrong)} keys not counted exactly once, e.g. {list(wrong.items())[:3]}"
    assert set(by_key) == set(expected)


def test_windows_behind_a_union_wait_for_the_topic_read_behind(
    kafka_bootstrap, new_topic, tmp_path
):
    """Windows behind ``union`` and ``key_by(fn)`` (tests/jobs/union_windows.py) fire
    once *both* topics passed their end: topic A's readings are all there and read
    first, topic B's first tenth only; the rest of B comes seconds later. The
    repartition topic carries both topics' watermarks, so no window fired on A's alone:
    every window holds every reading of both topics, once, and none is late. Closers
    (a reading a minute after the rest, in every partition) end the run."""
    a, b, out = new_topic(partitions=3), new_topic(partitions=2), new_topic(partitions=2)
    rng = random.Random(15)
    span_ms, keys = 300_000, [f"k{i}" for i in range(20)]
    rows = {
        topic: [{"k": rng.choice(keys), "ts": ts} for ts in sorted(rng.randrange(span_ms)
                                                                   for _ in range(n))]
        for topic, n in ((a, 5_000), (b, 5_000))
    }  # fmt: skip
    partitions = {a: 3, b: 2}
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20})

    def produce(topic: str, readings: list[dict], closers: bool = False) -> None:
        for i, r in enumerate(readings):
            producer.produce(topic, orjson.dumps(r), partition=i % partitions[topic])
        for p in range(partitions[topic]) if closers else ():
            closer = {"k": "zz-closer", "ts": span_ms + 60_000}
            producer.produce(topic, orjson.dumps(closer), partition=p)
        assert producer.flush(60) == 0

    produce(a, rows[a], closers=True)
    produce(b, rows[b][:500])
    expected = Counter((r["k"], r["ts"] - r["ts"] % 10_000) for rs in rows.values() for r in rs)
    group = f"union-w-{uuid.uuid4().hex[:10]}"
    args = ["--state-dir", str(tmp_path / "state"), "--checkpoint-interval-ms", "200",
            "--slots", "2", *SESSION]  # fmt: skip
    env = job_env(in_a=a, in_b=b, out=out)
    workers = Workers("union_windows.py", kafka_bootstrap, group, env, args, tmp_path / "logs")
    try:
        workers.start("w1").wait_running(60)
        wait_for(lambda: committed_reached(kafka_bootstrap, group, a), 60,
                 "topic A processed to its end", every=0.5, check=workers.check_alive)  # fmt: skip
        produce(b, rows[b][500:], closers=True)
        wait_for(
            lambda: len(consume_all(kafka_bootstrap, out, None, 30, partial=True)) >= len(expected),
            180,
            "every window",
            every=2,
            check=workers.check_alive,
            detail=workers.logs_tail,
        )
        late = metric(workers.live["w1"].metrics(), "weir_records_late_total")
        workers.stop_all()
    finally:
        workers.close()
    got = Counter()
    for r in consume_all(kafka_bootstrap, out, None, 60):
        got[(r["value"]["key"], r["value"]["window_start"])] += r["value"]["n"]
    assert late == 0, f"{late} readings late"
    assert got == expected, (
        f"{sum((expected - got).values())} readings missing from their windows,"
        f" {sum((got - expected).values())} extra"
    )
