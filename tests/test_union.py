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
from collections import defaultdict

from tests.feeding import Feeder
from tests.kafka_fixture import consume_all
from tests.waiting import wait_for
from tests.workers import Workers, job_env

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
            lambda: len(consume_all(kafka_bootstrap, out, None, 30)) >= len(records),
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
