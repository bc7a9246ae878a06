"""Impossible or unwelcome event times never stop a job.

Unit level (no broker): the source refuses event times that are not epoch
milliseconds, and sends those further ahead than ``max_future`` to the dead-letter
topic without letting them move the watermark; a topic's limits say which records its
broker would refuse. End to end: a ``key_by(fn)`` window job fed a reading ten years
ahead and one whose time is not epoch ms: each goes to the dead-letter topic with its
reason, every other window is exact, and the worker never restarts. A reading two
hours ahead (more than a broker accepts as a record timestamp by default) is a
reading like any other: repartition records are stamped with the wall clock.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import defaultdict
from typing import Any

from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from tests.kafka_fixture import consume_all, produce_json
from tests.waiting import wait_for
from tests.workers import WorkerProcess, job_env, metric
from weir import Job
from weir.operators.chain import MAX_EPOCH_MS, Batch, SourceOp
from weir.operators.physical import compile_plan
from weir.service.topics import CLOCK_MARGIN_MS, RECORD_OVERHEAD, TopicLimits, capped

DAY_MS = 86_400_000


class Message:
    """What a source operator reads of a Kafka message."""

    def __init__(self, value: bytes, offset: int) -> None:
        self._value, self._offset = value, offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, 0)

    def offset(self) -> int:
        return self._offset


class Ctx:
    slot, slots, state = 0, 1, None

    def __init__(self) -> None:
        self.failed: list[tuple[str, int, str]] = []
        self.lates: dict[str, int] = defaultdict(int)
        self.seen: list[int] = []

    def fail(self, operator: str, reason: str, batch: Batch, elem: Any, exc: BaseException):
        self.failed.append((reason, elem[3], str(exc)))

    def late(self, operator: str, count: int, reason: str = "late") -> None:
        self.lates[reason] += count

    def observe_time(self, topic: str, partition: int, max_timestamp: int) -> None:
        self.seen.append(max_timestamp)


def source_op(**options: Any) -> tuple[SourceOp, Ctx, list]:
    job = Job("guards")
    job.source("in", timestamp=lambda r: r["ts"], **options).sink("out")
    op = compile_plan(job, "g").roots[0].op
    ctx = Ctx()
    source = SourceOp(op, ctx)
    passed: list = []
    source.out = type("Out", (), {"process": lambda self, b: passed.extend(b.elems)})()
    source.track_time = True
    return source, ctx, passed


def test_event_times_that_are_not_epoch_ms_fail_their_record():
    source, ctx, passed = source_op()
    now = int(time.time() * 1000)
    values = [now, 1e20, -5, "NaN", MAX_EPOCH_MS + 1, now + 1]
    msgs = [Message(f'{{"ts": {v!r}}}'.replace("'", '"').encode(), i) for i, v in enumerate(values)]
    source.process(Batch("in", 0, msgs))
    assert [e[3] for e in passed] == [0, 5], "only the valid ones pass"
    assert [(reason, offset) for reason, offset, _ in ctx.failed] == [
        ("timestamp", 1), ("timestamp", 2), ("timestamp", 3), ("timestamp", 4)
    ]  # fmt: skip
    assert "not epoch milliseconds" in ctx.failed[0][2]
    assert ctx.seen == [now + 1]


def test_records_that_fail_to_decode_or_to_give_an_event_time_fail_alone_in_order():
    source, ctx, passed = source_op()
    now = int(time.time() * 1000)
    raws = [b"not json", f'{{"ts": {now}}}'.encode(), b"{}", f'{{"ts": {now + 1}}}'.encode()]
    source.process(Batch("in", 0, [Message(raw, i) for i, raw in enumerate(raws)]))
    assert [e[3] for e in passed] == [1, 3]
    assert [(reason, offset) for reason, offset, _ in ctx.failed] == [
        ("decode", 0), ("timestamp", 2)
    ]  # fmt: skip


def test_event_times_beyond_max_future_go_to_the_dlq_and_never_move_the_watermark():
    source, ctx, passed = source_op(max_future=3600)
    now = int(time.time() * 1000)
    ahead = now + 10 * 365 * DAY_MS
    msgs = [Message(f'{{"ts": {t}}}'.encode(), i) for i, t in enumerate([now, ahead, now + 5])]
    source.process(Batch("in", 0, msgs))
    assert [e[3] for e in passed] == [0, 2]
    assert [(reason, offset) for reason, offset, _ in ctx.failed] == [("future", 1)]
    assert "ahead of the wall clock" in ctx.failed[0][2] and "max_future=3600s" in ctx.failed[0][2]
    assert ctx.lates == {"future": 1}
    assert ctx.seen == [now + 5], "the watermark never sees the future record"
    off, ctx_off, passed_off = source_op(max_future=None)
    off.process(Batch("in", 0, msgs))
    assert len(passed_off) == 3 and not ctx_off.failed, "max_future=None: no limit"


def test_topic_limits_name_what_the_broker_would_refuse():
    limits = TopicLimits(max_bytes=100, before_ms=DAY_MS, after_ms=3_600_000)
    now = 1_800_000_000_000
    assert limits.refusal(b"k", b"v" * 10, now, now) is None
    assert limits.refusal(None, b"v", 0, now) is None, "stamped by the producer"
    assert "exceeds" in limits.refusal(b"k", b"v" * 100, now, now)
    assert "after.max.ms" in limits.refusal(b"k", b"v", now + 3_600_000, now)
    assert "before.max.ms" in limits.refusal(b"k", b"v", now - DAY_MS, now)
    late_ok = now + 3_600_000 - CLOCK_MARGIN_MS
    assert limits.refusal(b"k", b"v", late_ok, now) is None
    big, low, high = limits.bounds(now)
    assert (big, low, high) == (100, now - DAY_MS + CLOCK_MARGIN_MS, late_ok)
    assert TopicLimits().refusal(b"k", b"v" * 10**6, 2**62, now) is None, "no limits"


def test_a_reading_years_ahead_never_stops_a_key_by_window_job(
    kafka_bootstrap, new_topic, tmp_path
):
    src, out = new_topic(partitions=1), new_topic()
    group = f"guard-{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)
    start = now - 60_000 - now % 10_000
    readings = [{"tag": f"t{i % 5}", "ts": start + i * 100, "value": i} for i in range(300)]
    bad = [
        {"tag": "t0", "ts": now + 10 * 365 * DAY_MS, "value": -1},  # seconds for ms: future
        {"tag": "t1", "ts": 1e20, "value": -2},  # not epoch ms
        {"tag": "t2", "ts": now + 2 * 3_600_000, "value": -3},  # in a window of its own
    ]
    produce_json(kafka_bootstrap, src, readings + bad)
    worker = WorkerProcess(
        "windowed.py", kafka_bootstrap, group, "w1", tmp_path,
        job_env(in_=src, out=out, window="tumbling", key_by="tag", idle=1),
        ["--checkpoint-interval-ms", "200"],
    )  # fmt: skip
    want: dict[tuple[str, int], list[int]] = defaultdict(list)
    for r in readings:
        want[(r["tag"], r["ts"] - r["ts"] % 10_000)].append(r["value"])
    try:
        got = consume_all(kafka_bootstrap, out, expected=len(want), timeout=90)
        dead = consume_all(kafka_bootstrap, f"{group}.dlq", expected=2, timeout=60)
        metrics = worker.metrics()
        assert worker.proc.poll() is None, worker.log_tail()
        assert worker.terminate(60) == 0
    finally:
        worker.close()
    windows = {(r["value"]["key"], r["value"]["window_start"]): r["value"] for r in got}
    assert set(windows) == set(want), "every window of the good readings, no other"
    for key, values in want.items():
        assert (windows[key]["count"], windows[key]["sum"]) == (len(values), sum(values)), key
    reasons = sorted(dict(d["headers"])["weir.reason"].decode() for d in dead)
    assert reasons == ["future", "timestamp"], reasons
    assert sorted(d["value"]["value"] for d in dead) == [-2, -1]
    assert metric(metrics, "weir_restarts_total") == 0
    assert metric(metrics, "weir_records_late_total", reason="future") == 1


def _set_max_message_bytes(admin: AdminClient, topic: str, value: str | None) -> None:
    """Set the topic's max.message.bytes (None: back to the broker's default)."""
    op = AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
    entry = ConfigEntry("max.message.bytes", value or "", incremental_operation=op)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def test_a_topic_limit_lowered_while_running_is_honoured(kafka_bootstrap, new_topic, tmp_path):
    """The sink topic's max.message.bytes is lowered under a running worker: within the
    refresh interval the worker knows, and a record over the new limit goes to the DLQ
    (reason too-large) instead of failing its transaction; the worker never restarts."""
    src, out = new_topic(), new_topic()
    group = f"limits-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(
        "upper_bytes.py", kafka_bootstrap, group, "w1", tmp_path,
        {**job_env(in_=src, out=out), "WEIR_TOPIC_CONFIG_REFRESH_S": "1"},
        ["--checkpoint-interval-ms", "200"],
    )  # fmt: skip
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    try:
        produce_json(kafka_bootstrap, src, ["a" * 100_000])  # the JSON text "aaa…"
        first = consume_all(kafka_bootstrap, out, expected=1, timeout=60, decode_json=False)
        assert first[0]["value"] == b'"' + b"A" * 100_000 + b'"'
        _set_max_message_bytes(admin, out, "50000")
        time.sleep(4)  # the worker reads topic configs every second
        produce_json(kafka_bootstrap, src, ["b" * 100_000, "small"])
        dead = consume_all(kafka_bootstrap, f"{group}.dlq", 1, 60, decode_json=False)
        outputs = consume_all(kafka_bootstrap, out, expected=2, timeout=60, decode_json=False)
        metrics = worker.metrics()
        assert worker.proc.poll() is None, worker.log_tail()
    finally:
        worker.close()
    assert dict(dead[0]["headers"])["weir.reason"] == b"too-large"
    assert outputs[1]["value"] == b'"SMALL"'
    assert metric(metrics, "weir_restarts_total") == 0
    assert metric(metrics, "weir_checkpoints_total", status="failed") == 0


def test_a_record_the_broker_refuses_fails_its_transaction_naming_topic_and_reason(
    kafka_bootstrap, new_topic, tmp_path
):
    """Exactly-once: the sink's max.message.bytes is lowered under a worker that does not
    re-read it (once a day), so the broker refuses a record the worker took to fit. The
    transaction holding it fails and rolls back — the worker says which topic refused
    what, and why, and tries again, showing nothing of that transaction meanwhile. Once
    the limit is back the record goes out, exactly once and in order. (The worker's
    transactional producer has no delivery callback: the failed commit itself names the
    refusal.)"""
    src, out = new_topic(), new_topic()
    group = f"refused-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(
        "upper_bytes.py", kafka_bootstrap, group, "w1", tmp_path,
        {**job_env(in_=src, out=out), "WEIR_TOPIC_CONFIG_REFRESH_S": "86400"},
        ["--checkpoint-interval-ms", "200"],
    )  # fmt: skip
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    try:
        produce_json(kafka_bootstrap, src, ["first"])
        assert len(consume_all(kafka_bootstrap, out, expected=1, timeout=60)) == 1
        _set_max_message_bytes(admin, out, "50000")
        produce_json(kafka_bootstrap, src, ["b" * 100_000, "small"])

        def rollbacks() -> list[str]:
            lines = worker.log_tail(200).splitlines()
            return [line for line in lines if "rolling back" in line and "too large" in line]

        refused = wait_for(rollbacks, 60, "the refused commit logged", check=worker.check_alive,
                           detail=lambda: f": {worker.log_tail()}")  # fmt: skip
        assert out in refused[0], refused[0]
        meanwhile = consume_all(kafka_bootstrap, out, None, 30, decode_json=False)
        assert [r["value"] for r in meanwhile] == [b'"FIRST"'], "a refused transaction showed"
        _set_max_message_bytes(admin, out, None)
        consume_all(kafka_bootstrap, out, expected=3, timeout=90, decode_json=False)
        outputs = consume_all(kafka_bootstrap, out, None, 30, decode_json=False)
        metrics = worker.metrics()
        worker.check_alive()
    finally:
        worker.close()
    assert [r["value"] for r in outputs] == [b'"FIRST"', b'"' + b"B" * 100_000 + b'"', b'"SMALL"']
    assert metric(metrics, "weir_checkpoints_total", status="failed") >= 1


def test_a_written_topic_is_taken_to_accept_no_more_than_the_producer_sends():
    """librdkafka refuses a record at ``produce`` once it is larger than its
    ``message.max.bytes`` with framing; a topic's default ``max.message.bytes`` is
    larger, so every written topic's limit is capped at the producer's, less overhead."""
    room = 1_000_000 - RECORD_OVERHEAD
    default = TopicLimits(max_bytes=1_048_588 - RECORD_OVERHEAD, before_ms=None, after_ms=3_600_000)
    assert capped(default, 1_000_000) == TopicLimits(room, None, 3_600_000)
    assert capped(TopicLimits(max_bytes=4096), 1_000_000).max_bytes == 4096, "the topic's is less"
    assert capped(TopicLimits(), 1_000_000).max_bytes == room, "no topic limit"


def test_a_record_larger_than_the_producer_sends_goes_to_the_dlq_as_too_large(
    kafka_bootstrap, new_topic, tmp_path
):
    """The sink topic takes 1 MB but the worker's producer sends at most 100 kB
    (``message.max.bytes``): a 150 kB output goes to the dead-letter topic as
    ``too-large`` — not refused by librdkafka as a ``produce`` failure, nor failing the
    slot where outputs held after a barrier go out — and the others flow on."""
    src, out = new_topic(), new_topic()
    group = f"big-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(
        "tagged.py", kafka_bootstrap, group, "w1", tmp_path, job_env(in_=src, out=out),
        ["--checkpoint-interval-ms", "100", "--kafka", "producer.message.max.bytes=100000"],
    )  # fmt: skip
    records = [{"n": i, "pad": "x" * (150_000 if i % 10 == 3 else 10)} for i in range(100)]
    try:
        produce_json(kafka_bootstrap, src, records)
        got = consume_all(kafka_bootstrap, out, expected=90, timeout=60)
        dead = consume_all(kafka_bootstrap, f"{group}.dlq", 10, 60, decode_json=False)
        metrics = worker.metrics()
        worker.check_alive()
    finally:
        worker.close()
    assert sorted(r["value"]["n"] for r in got) == [i for i in range(100) if i % 10 != 3]
    numbers = sorted(int(re.match(rb'{"n":(\d+)', r["value"]).group(1)) for r in dead)
    assert numbers == list(range(3, 100, 10)), "the dead letter keeps the value's start"
    assert {dict(r["headers"])["weir.reason"] for r in dead} == {b"too-large"}
    assert metric(metrics, "weir_restarts_total") == 0
