"""Keyed state end to end: aggregates through a repartition topic, process functions
with state and timers, and state surviving a restart."""

from __future__ import annotations

import uuid

from tests.kafka_fixture import consume_all, produce_json
from tests.workers import WorkerThread, job_env

T0 = 1_700_000_000_000


def test_aggregate_per_record_key_matches_a_reference(kafka_bootstrap, new_topic, tmp_path):
    src, out = new_topic(partitions=3), new_topic(partitions=3)
    records = [{"tag": f"s{i % 7}", "value": (i * 37) % 101} for i in range(3000)]
    produce_json(kafka_bootstrap, src, records, key=lambda r: r["tag"].encode())
    worker = WorkerThread(
        "sensor_aggregate.py",
        job_env(in_=src, out=out),
        bootstrap=kafka_bootstrap,
        slots=2,
        state_dir=str(tmp_path),
        checkpoint_interval_ms=200,
    )
    try:
        got = consume_all(kafka_bootstrap, out, expected=3000, timeout=60)
    finally:
        worker.stop()
    assert len(got) == 3000, "one update per input record"
    final = {}
    for r in got:  # per key, outputs are in order within one output partition
        final[r["value"]["key"]] = r["value"]
    for tag in {r["tag"] for r in records}:
        values = [r["value"] for r in records if r["tag"] == tag]
        f = final[tag]
        assert (f["count"], f["total"], f["low"], f["high"]) == (
            len(values),
            sum(values),
            min(values),
            max(values),
        )
        assert abs(f["mean"] - sum(values) / len(values)) < 1e-9


def test_process_function_state_and_timers(kafka_bootstrap, new_topic, tmp_path):
    src, out = new_topic(partitions=2), new_topic()
    records = [{"n": i, "kind": "ab"[i % 2], "ts": T0 + i * 10, "boom": i == 7} for i in range(40)]
    produce_json(kafka_bootstrap, src, records, key=lambda r: f"k{r['n'] % 4}".encode())
    group = f"g-{uuid.uuid4().hex}"
    worker = WorkerThread(
        "process_timers.py",
        job_env(in_=src, out=out),
        bootstrap=kafka_bootstrap,
        group=group,
        slots=2,
        state_dir=str(tmp_path),
        checkpoint_interval_ms=200,
    )
    try:
        got = consume_all(kafka_bootstrap, out, expected=39 + 8, timeout=60)
        dead = consume_all(kafka_bootstrap, f"{group}.dlq", expected=1, timeout=30)
    finally:
        worker.stop()
    per_record = [r["value"] for r in got if "timer" not in r["value"]]
    timers = [r["value"] for r in got if "timer" in r["value"]]
    assert sorted(v["n"] for v in per_record) == [i for i in range(40) if i != 7]
    for key in ("k0", "k1", "k2", "k3"):
        counts = [v["count"] for v in per_record if v["key"] == key]
        assert counts == list(range(1, len(counts) + 1)), "the failed record changed no state"
    assert sorted((t["key"], t["timer"]) for t in timers) == sorted(
        (f"k{k}", d) for k in range(4) for d in ("event", "processing")
    ), "each key's two timers fire once"
    for t in timers:
        if t["timer"] == "event":  # fired once the watermark passed ts+1000: all 10 records in
            mine = [r for r in records if f"k{r['n'] % 4}" == t["key"] and not r["boom"]]
            assert t["count"] == len(mine)
            assert t["recent"] == [r["n"] for r in mine][-3:]
            assert t["kinds"] == {
                kind: sum(1 for r in mine if r["kind"] == kind)
                for kind in "ab"
                if any(r["kind"] == kind for r in mine)
            }
    assert len(dead) == 1 and dead[0]["value"]["n"] == 7


def test_restored_event_time_timers_fire_with_no_new_input(kafka_bootstrap, new_topic, tmp_path):
    """Timers pending at a stop fire after the restart although nothing new arrives:
    the watermark restarts from the one the partitions had reached (kept in state), and
    idle partitions then let it advance."""
    src, out = new_topic(partitions=2), new_topic()
    records = [{"n": i, "kind": "a", "ts": T0 + i * 10} for i in range(40)]  # ts up to T0+390
    for p in (0, 1):  # both partitions have records, so both move the watermark
        mine = [r for r in records if r["n"] % 2 == p]
        produce_json(
            kafka_bootstrap, src, mine, key=lambda r: f"k{r['n'] % 4}".encode(), partition=p
        )
    group = f"g-{uuid.uuid4().hex}"

    def start(idle: float) -> WorkerThread:
        return WorkerThread(
            "process_timers.py", job_env(in_=src, out=out, idle=idle), bootstrap=kafka_bootstrap,
            group=group, worker_id="w1", slots=2, state_dir=str(tmp_path),
            checkpoint_interval_ms=200,
        )  # fmt: skip

    worker = start(idle=3600)  # never idle: the watermark stops at T0+390, timers wait
    try:
        first = consume_all(kafka_bootstrap, out, expected=40 + 4, timeout=60)
    finally:
        worker.stop()
    assert not [r for r in first if r["value"].get("timer") == "event"], "fired too early"
    worker = start(idle=1.0)  # nothing new: all partitions go idle, time moves on
    try:
        got = consume_all(kafka_bootstrap, out, expected=40 + 4 + 4, timeout=60)
    finally:
        worker.stop()
    fired = sorted(r["value"]["key"] for r in got if r["value"].get("timer") == "event")
    assert fired == ["k0", "k1", "k2", "k3"], "each key's event timer fires once after restart"
    assert all(r["value"]["count"] == 10 for r in got if r["value"].get("timer") == "event")
