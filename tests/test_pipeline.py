"""A stateless pipeline end to end through a real broker, and the errors users see."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import Producer

from tests.kafka_fixture import consume_all, produce_json
from tests.workers import JOBS, ROOT, WorkerProcess, WorkerThread, job_env


def _records(n: int) -> list[dict]:
    return [{"n": i, "k": f"k{i % 50}"} for i in range(n)]


def _key(record: dict) -> bytes:
    return record["k"].encode()


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_json_pipeline_delivers_every_record_once(kafka_bootstrap, new_topic, guarantee):
    src, out = new_topic(partitions=3), new_topic(partitions=3)
    produce_json(kafka_bootstrap, src, _records(3000), key=_key)
    worker = WorkerThread(
        "tagged.py",
        job_env(in_=src, out=out),
        bootstrap=kafka_bootstrap,
        slots=2,
        guarantee=guarantee,
        checkpoint_interval_ms=200,
    )
    try:
        got = consume_all(kafka_bootstrap, out, expected=3000, timeout=60)
    finally:
        worker.stop()
    ns = sorted(r["value"]["n"] for r in got)
    assert ns == list(range(3000)), "every input exactly once in the output"
    assert all(r["key"] == r["value"]["k"] for r in got), "the input key is kept"
    assert {r["value"]["slot"] for r in got} == {"weir-slot-0", "weir-slot-1"}


def test_bytes_pipeline(kafka_bootstrap, new_topic):
    src, out = new_topic(partitions=2), new_topic()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    values = [f"reading-{i}".encode() for i in range(500)] + [b""] * 10
    for v in values:
        producer.produce(src, v)
    assert producer.flush(30) == 0
    worker = WorkerThread(
        "upper_bytes.py",
        job_env(in_=src, out=out),
        bootstrap=kafka_bootstrap,
    )
    try:
        got = consume_all(kafka_bootstrap, out, expected=500, timeout=60, decode_json=False)
        time.sleep(1)  # the empty values must not show up late either
        got = consume_all(kafka_bootstrap, out, expected=None, timeout=30, decode_json=False)
    finally:
        worker.stop()
    assert sorted(r["value"] for r in got) == sorted(v.upper() for v in values if v)


def test_branches_and_exchanges(kafka_bootstrap, new_topic):
    src, out, evens = new_topic(partitions=2), new_topic(partitions=2), new_topic()
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    records = [{"n": i, "words": words[: 1 + i % 5]} for i in range(400)]
    produce_json(kafka_bootstrap, src, records)
    expected_words = sum(1 + i % 5 for i in range(400))
    worker = WorkerThread(
        "branches.py",
        job_env(in_=src, out=out, evens=evens),
        bootstrap=kafka_bootstrap,
        slots=4,
        checkpoint_interval_ms=200,
    )
    try:
        got = consume_all(kafka_bootstrap, out, expected=expected_words, timeout=60)
        got_evens = consume_all(kafka_bootstrap, evens, expected=200, timeout=60)
    finally:
        worker.stop()
    assert len(got) == expected_words
    assert sorted((r["value"]["n"], r["value"]["word"]) for r in got) == sorted(
        (r["n"], w) for r in records for w in r["words"]
    )
    slot_of_word: dict[str, set[str]] = {}
    for r in got:
        assert r["key"] == r["value"]["word"], "key_by sets the output key"
        slot_of_word.setdefault(r["value"]["word"], set()).add(r["value"]["slot"])
    assert all(len(s) == 1 for s in slot_of_word.values()), "one word, one slot"
    assert sorted(r["value"]["n"] for r in got_evens) == list(range(0, 400, 2))


def test_bad_records_are_counted_and_dead_lettered(kafka_bootstrap, new_topic):
    src, out = new_topic(), new_topic()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    good = [f'{{"n": {i}}}'.encode() for i in range(100)]
    bad = [b"{not json", b"\xff\xfe", b'{"n": 1']
    for v in good[:50] + bad + good[50:]:
        producer.produce(src, v)
    assert producer.flush(30) == 0
    group = f"g-{uuid.uuid4().hex}"
    worker = WorkerThread(
        "tagged.py",
        job_env(in_=src, out=out, fail_on=7),
        bootstrap=kafka_bootstrap,
        group=group,
    )
    try:
        got = consume_all(kafka_bootstrap, out, expected=99, timeout=60)
        dead = consume_all(
            kafka_bootstrap, f"{group}.dlq", expected=4, timeout=60, decode_json=False
        )
        registry = worker.worker.metrics.registry
        decode_failures = registry.get_sample_value(
            "weir_records_failed_total",
            {"weir_job": "tagged", "operator": f"source-{src}", "reason": "decode"},
        )
        function_failures = registry.get_sample_value(
            "weir_records_failed_total",
            {"weir_job": "tagged", "operator": "map-2", "reason": "function"},
        )
        assert worker.thread.is_alive(), "bad records never stop the worker"
    finally:
        worker.stop()
    assert sorted(r["value"]["n"] for r in got) == [i for i in range(100) if i != 7]
    assert sorted(r["value"] for r in dead) == sorted([*bad, b'{"n":7}'])
    assert decode_failures == 3
    assert function_failures == 1


def _weir(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "weir.service.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_job_file_with_syntax_error(tmp_path, kafka_bootstrap):
    bad = tmp_path / "broken.py"
    bad.write_text("from weir import Job\njob = Job('x'\n")
    line = _one_line_error(_weir("run", str(bad), "--bootstrap", kafka_bootstrap))
    assert "broken.py:2" in line and "syntax error" in line


def test_job_file_without_job(tmp_path, kafka_bootstrap):
    empty = tmp_path / "nothing.py"
    empty.write_text("x = 1\n")
    line = _one_line_error(_weir("run", str(empty), "--bootstrap", kafka_bootstrap))
    assert "must define `job = Job(...)`" in line


def test_unreachable_kafka(tmp_path):
    """Kafka down at start: tried again with backoff (each try logged), then, after
    broker_timeout_s, one error line and exit code 3 — an outage, not a usage error."""
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "weir.service.cli", "run", str(JOBS / "upper_bytes.py"),
         "--bootstrap", "127.0.0.1:1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "WEIR_TEST_IN": "a", "WEIR_TEST_OUT": "b",
             "WEIR_CONNECT_TIMEOUT_S": "2", "WEIR_BROKER_TIMEOUT_S": "6",
             "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "trying again" in lines[0], "each try is logged"
    assert lines[-1].startswith("weir: error: connecting: cannot reach Kafka at 127.0.0.1:1")
    assert "gave up after 6s" in lines[-1]
    assert time.monotonic() - start < 30, "bounded wait"


def test_missing_topic(kafka_bootstrap):
    result = subprocess.run(
        [sys.executable, "-m", "weir.service.cli", "run", str(JOBS / "upper_bytes.py"),
         "--bootstrap", kafka_bootstrap],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "WEIR_TEST_IN": "no-such-topic", "WEIR_TEST_OUT": "b",
             "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    line = _one_line_error(result)
    assert "source topic 'no-such-topic' does not exist" in line


def test_bad_flag_value(kafka_bootstrap):
    line = _one_line_error(
        _weir("run", str(JOBS / "upper_bytes.py"), "--bootstrap", kafka_bootstrap, "--slots", "0")
    )
    assert "slots" in line and "from 1 to" in line


def test_sigterm_stops_cleanly_with_exit_0(kafka_bootstrap, new_topic, tmp_path):
    src, out = new_topic(partitions=2), new_topic()
    produce_json(kafka_bootstrap, src, _records(200), key=_key)
    worker = WorkerProcess(
        "tagged.py",
        kafka_bootstrap,
        f"g-{uuid.uuid4().hex}",
        "w1",
        tmp_path,
        env=job_env(in_=src, out=out),
    )
    try:
        worker.wait_running()
        assert len(consume_all(kafka_bootstrap, out, expected=200, timeout=60)) == 200
        assert worker.terminate(timeout=30) == 0, worker.log_tail()
    finally:
        worker.close()


def test_record_over_the_sink_limit_goes_to_the_dlq(kafka_bootstrap, new_topic):
    src = new_topic()
    out = new_topic(config={"max.message.bytes": "4096"})
    records = [{"n": i, "pad": "x" * (9000 if i % 10 == 3 else 10)} for i in range(50)]
    produce_json(kafka_bootstrap, src, records)
    group = f"g-{uuid.uuid4().hex}"
    worker = WorkerThread(
        "tagged.py", job_env(in_=src, out=out), bootstrap=kafka_bootstrap, group=group,
        checkpoint_interval_ms=200,
    )  # fmt: skip
    try:
        got = consume_all(kafka_bootstrap, out, expected=45, timeout=60)
        dead = consume_all(kafka_bootstrap, f"{group}.dlq", expected=5, timeout=60)
        assert worker.thread.is_alive()
    finally:
        worker.stop()
    assert sorted(r["value"]["n"] for r in got) == [i for i in range(50) if i % 10 != 3]
    assert sorted(r["value"]["n"] for r in dead) == [3, 13, 23, 33, 43]


def test_restart_strategy_gives_up_after_its_attempts(kafka_bootstrap, new_topic, tmp_path):
    src, out = new_topic(), new_topic()
    t0 = 1_700_000_000_000
    produce_json(
        kafka_bootstrap,
        src,
        [{"n": i, "ts": t0 + i} for i in range(10)],
        key=lambda r: b"bad" if r["n"] == 5 else b"good",
    )
    worker = WorkerThread(
        "window_bug.py", job_env(in_=src, out=out), bootstrap=kafka_bootstrap,
        state_dir=str(tmp_path),
        restart_strategy="fixed-delay", restart_attempts=2, restart_delay_ms=100,
    )  # fmt: skip
    worker.thread.join(60)
    assert not worker.thread.is_alive(), "the worker gave up"
    assert "after 2 restart(s), giving up" in str(worker.error)
    assert "bug in summarize" in str(worker.error)
    restarts = worker.worker.metrics.registry.get_sample_value(
        "weir_restarts_total", {"weir_job": "window-bug"}
    )
    assert restarts == 2


def test_wrong_type_for_an_aggregate_goes_to_the_dlq(kafka_bootstrap, new_topic, tmp_path):
    src, out = new_topic(), new_topic()
    records = [{"tag": "s1", "value": v} for v in (1, 2, "three", 4, None, 5)]
    produce_json(kafka_bootstrap, src, records, key=lambda r: r["tag"].encode())
    group = f"g-{uuid.uuid4().hex}"
    worker = WorkerThread(
        "sensor_aggregate.py", job_env(in_=src, out=out), bootstrap=kafka_bootstrap,
        group=group, state_dir=str(tmp_path), checkpoint_interval_ms=200,
    )  # fmt: skip
    try:
        got = consume_all(kafka_bootstrap, out, expected=4, timeout=60)
        dead = consume_all(kafka_bootstrap, f"{group}.dlq", expected=2, timeout=60)
        assert worker.thread.is_alive()
    finally:
        worker.stop()
    assert [r["value"]["count"] for r in got] == [1, 2, 3, 4], "bad records left no trace"
    assert got[-1]["value"]["total"] == 12
    assert sorted(str(r["value"]["value"]) for r in dead) == ["None", "three"]


def test_bad_config_file_fails_with_one_line_naming_the_key(tmp_path, kafka_bootstrap):
    conf = tmp_path / "weir.toml"
    conf.write_text('bootstrap = "x:1"\nslots = 2\ncheckpoint_intervall_ms = 5\n')
    line = _one_line_error(_weir("run", str(JOBS / "upper_bytes.py"), "--config", str(conf)))
    assert "checkpoint_intervall_ms" in line and "unknown" in line
    conf.write_text('slots = "many"\n')
    line = _one_line_error(_weir("run", str(JOBS / "upper_bytes.py"), "--config", str(conf)))
    assert "'slots'" in line and "whole number" in line
