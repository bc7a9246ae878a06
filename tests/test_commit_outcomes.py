"""A commit whose outcome the worker cannot know (the broker committed, the client
reported a timeout) is never taken for a rollback: the worker resumes from the group's
committed offsets and takes its state from the changelogs, so every count stays exact."""

from __future__ import annotations

import uuid
from collections import defaultdict

from tests.kafka_fixture import consume_all, produce_json
from tests.workers import WorkerProcess, job_env

KEYS = 7


def test_a_commit_reported_as_timed_out_after_it_committed(kafka_bootstrap, new_topic, tmp_path):
    src, out = new_topic(partitions=3), new_topic(partitions=3)
    records = [{"n": n} for n in range(3000)]
    worker = WorkerProcess(
        "keyed_count.py", kafka_bootstrap, f"amb-{uuid.uuid4().hex[:8]}", "w1", tmp_path,
        {**job_env(in_=src, out=out), "WEIR_FAULT_INJECT": "ambiguous-commit:3"},
        ["--checkpoint-interval-ms", "200", "--slots", "2"],
    )  # fmt: skip
    try:
        worker.wait_running(60)
        for start in range(0, len(records), 300):  # spread over many checkpoints
            batch = records[start : start + 300]
            produce_json(kafka_bootstrap, src, batch, key=lambda r: f"k{r['n'] % KEYS}".encode())
        outputs = consume_all(kafka_bootstrap, out, expected=len(records), timeout=120)
        assert worker.terminate(60) == 0, worker.log_tail()
        log = worker.log_tail(400)
    finally:
        worker.close()
    outputs = consume_all(kafka_bootstrap, out, expected=None, timeout=60)
    assert sorted(r["value"]["last"] for r in outputs) == list(range(len(records))), "once each"
    by_key: dict[str, list[int]] = defaultdict(list)
    for r in sorted(outputs, key=lambda r: r["value"]["last"]):
        by_key[r["value"]["key"]].append(r["value"]["count"])
    for key, counts in by_key.items():
        assert counts == list(range(1, len(counts) + 1)), f"{key}: {counts[:30]}"
    assert "fault injection: reporting a committed transaction as timed out" in log
    assert "from the changelogs again" in log, log
