"""A hung user function never leaves a worker stuck and silent: the checkpoint times out,
``/ready`` says which operator and record, the restart strategy applies, and once its
attempts are spent the worker exits with the cause — whether the function runs on a slot
thread or, one slot's stateless chain, on the fetch thread (`weir.service.inline`)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.kafka_fixture import consume_all, produce_json
from tests.workers import WorkerProcess, job_env

CHECKPOINT_TIMEOUT_S = 3


def _ready(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as exc:
        return 0, str(exc)


@pytest.mark.parametrize(
    "slots",
    [1, pytest.param(2, marks=pytest.mark.slow)],  # ~20 s; a slot thread's hang is unit-tested
    ids=["fetch-thread", "slot-thread"],
)
def test_hung_map_turns_not_ready_naming_the_operator(kafka_bootstrap, new_topic, tmp_path, slots):
    src, out = new_topic(partitions=1), new_topic()
    produce_json(kafka_bootstrap, src, [{"n": n} for n in range(20)])
    worker = WorkerProcess(
        "hangs.py", kafka_bootstrap, f"hang-{uuid.uuid4().hex[:8]}", "w1", tmp_path,
        job_env(in_=src, out=out, hang_at=20),
        ["--checkpoint-interval-ms", "200", "--checkpoint-timeout-ms",
         str(CHECKPOINT_TIMEOUT_S * 1000), "--restart-attempts", "1", "--restart-delay-ms", "500",
         "--slots", str(slots)],
    )  # fmt: skip
    try:
        worker.wait_running(60)
        got = consume_all(kafka_bootstrap, out, expected=20, timeout=60)
        status = worker.status()
        assert status["chain_on_fetch_thread"] is (slots == 1), status
        assert (status["fetch_thread_batches"] > 0) is (slots == 1), status
        assert sorted(r["value"]["n"] for r in got) == list(range(20)), "the records before it"
        produce_json(kafka_bootstrap, src, [{"n": n} for n in range(20, 50)])
        hung_at = time.monotonic()
        status, body = 200, ""
        while time.monotonic() - hung_at < CHECKPOINT_TIMEOUT_S + 5:
            status, body = _ready(worker.http_port)
            if status == 503 and "slow-lookup" in body:
                break
            time.sleep(0.2)
        assert status == 503 and "'slow-lookup'" in body, (status, body)
        assert f"{src}[0]@20" in body, body  # the record it is stuck on
        code = worker.wait(4 * CHECKPOINT_TIMEOUT_S + 30)
        log = worker.log_tail(80)
        assert code == 1, log
        assert "restart 1 of 1" in log and "giving up" in log, log
        assert "did not complete within 3s" in log and f"{src}[0]@20" in log, log
    finally:
        worker.close()


def test_stop_is_bounded_even_with_a_hung_function(kafka_bootstrap, new_topic, tmp_path):
    """SIGTERM while a slot hangs: the worker exits within shutdown_timeout_s (plus the
    time to start), saying which step overran, instead of waiting forever."""
    src, out = new_topic(partitions=1), new_topic()
    produce_json(kafka_bootstrap, src, [{"n": n} for n in range(5)])
    worker = WorkerProcess(
        "hangs.py", kafka_bootstrap, f"hang-{uuid.uuid4().hex[:8]}", "w1", tmp_path,
        {**job_env(in_=src, out=out, hang_at=2), "WEIR_SHUTDOWN_TIMEOUT_S": "4"},
        ["--checkpoint-timeout-ms", "60000"],
    )  # fmt: skip
    try:
        worker.wait_running(60)
        time.sleep(2)  # the slot is inside the hung call now
        started = time.monotonic()
        code = worker.terminate(30)
        took = time.monotonic() - started
        log = worker.log_tail(40)
        assert took < 4 + 5, f"stopping took {took:.1f}s: {log}"
        assert code == 1 and "stopping overran shutdown_timeout_s=4: " in log, (code, log)
    finally:
        worker.close()


@pytest.mark.slow  # ~15 s: the timeout, the grace, a fresh process
def test_a_function_that_swallows_the_interrupt_ends_the_process(
    kafka_bootstrap, new_topic, tmp_path
):
    """The chain runs on the fetch thread and its function catches the interrupt the
    watchdog raises in it, and waits again: the process cannot recover in place, so it
    exits with code 3 (for a fresh process to take over) shortly after, naming where."""
    src, out = new_topic(partitions=1), new_topic()
    produce_json(kafka_bootstrap, src, [{"n": n} for n in range(5)])
    worker = WorkerProcess(
        "hangs.py", kafka_bootstrap, f"hang-{uuid.uuid4().hex[:8]}", "w1", tmp_path,
        job_env(in_=src, out=out, hang_at=2, stubborn=1),
        ["--checkpoint-interval-ms", "200", "--checkpoint-timeout-ms",
         str(CHECKPOINT_TIMEOUT_S * 1000)],
    )  # fmt: skip
    try:
        worker.wait_running(60)
        started = time.monotonic()
        code = worker.wait(CHECKPOINT_TIMEOUT_S + 5 + 20)  # the timeout, the grace, margin
        log = worker.log_tail(40)
        assert code == 3, log
        assert time.monotonic() - started < CHECKPOINT_TIMEOUT_S + 5 + 15, log
        assert "did not return 5s after it was interrupted" in log, log
        assert "'slow-lookup'" in log and f"{src}[0]@2" in log, log
    finally:
        worker.close()
