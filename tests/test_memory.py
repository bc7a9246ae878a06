"""Memory is bounded in bytes: large records through a skewed exchange into a slow
operator never grow a worker past its queues' byte bounds (``slot_queue_bytes``)."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.kafka_fixture import consume_all, produce_json
from tests.workers import WorkerProcess, job_env
from weir.service.router import SlotRouter

RECORDS = 400
RECORD_BYTES = 900_000
QUEUE_BYTES = 32 * 1024 * 1024
# Interpreter and libraries (~100 MB) + 2 slots x slot_queue_bytes (decoded values
# may take as much again) + librdkafka's fetch queue (16 MB) and room for the producer's
# (small outputs here).
PEAK_RSS_BOUND = 100e6 + 2 * 2 * QUEUE_BYTES + 80 * 1024 * 1024


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_slot_behind_an_exchange_is_fed_by_every_partition():
    partitions = {("in", 0), ("in", 1), ("in", 2)}
    pinned = SlotRouter(2, 128)
    pinned.reassign(partitions)
    assert len(pinned.feeds(0)) < 3, "without exchanges: only its pinned partitions"
    exchanging = SlotRouter(2, 128, exchanges=True)
    exchanging.reassign(partitions)
    assert set(exchanging.feeds(0)) == set(exchanging.feeds(1)) == partitions


def test_large_records_behind_a_hot_key_stay_within_the_byte_bounds(
    kafka_bootstrap, new_topic, tmp_path
):
    src, out = new_topic(partitions=2), new_topic()
    pad = "x" * RECORD_BYTES
    for start in range(0, RECORDS, 40):
        batch = [{"n": n, "pad": pad} for n in range(start, start + 40)]
        produce_json(kafka_bootstrap, src, batch, key=lambda r: str(r["n"]).encode(), timeout=60)
    worker = WorkerProcess(
        "hot_key.py", kafka_bootstrap, f"mem-{uuid.uuid4().hex[:8]}", "w1", tmp_path,
        {**job_env(in_=src, out=out, delay=0.03), "WEIR_SLOT_QUEUE_BYTES": str(QUEUE_BYTES)},
        ["--slots", "2"],
    )  # fmt: skip
    try:
        got = consume_all(kafka_bootstrap, out, expected=RECORDS, timeout=180)
        peak = _peak_rss(worker.proc.pid)
        assert worker.terminate(60) == 0, worker.log_tail()
    finally:
        worker.close()
    assert sorted(r["value"]["n"] for r in got) == list(range(RECORDS))
    print(f"peak RSS {peak / 1e6:.0f} MB for {RECORDS * RECORD_BYTES / 1e6:.0f} MB of input")
    assert peak < PEAK_RSS_BOUND, f"peak RSS {peak / 1e6:.0f} MB > {PEAK_RSS_BOUND / 1e6:.0f} MB"
