"""``weir produce-sample --rate``: a steady stream of readings stamped with the wall clock,
as the docker-compose producer runs it, so the example's windows close in real time."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import KafkaException

from tests.kafka_fixture import consume_all
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
RATE = 100  # readings a second


def first_reading(bootstrap: str, topic: str) -> bool:
    try:
        return bool(consume_all(bootstrap, topic, 1, 2))
    except KafkaException:  # the command has not created the topic yet
        return False


def test_a_steady_stream_carries_the_time_it_is_written_and_stops_cleanly(kafka_bootstrap):
    topic = f"sample-{uuid.uuid4().hex[:8]}"
    started = time.time() * 1000
    proc = subprocess.Popen(
        [sys.executable, "-m", "weir.service.cli", "produce-sample", "--bootstrap", kafka_bootstrap,
         "--topic", topic, "--rate", str(RATE), "--count", "0", "--tags", "4"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: first_reading(kafka_bootstrap, topic), 60, "the first readings")
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)  # what `docker compose stop` sends
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    stopped = time.time() * 1000
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
    written = int(output.rsplit("wrote ", 1)[1].split()[0])
    records = consume_all(kafka_bootstrap, topic, written, 60)
    assert len(records) == written, f"{len(records)} of {written} readings arrived"

    stamps = sorted(r["value"]["ts"] for r in records)
    assert started <= stamps[0] and stamps[-1] <= stopped, "stamped with the current time"
    span_s = (stamps[-1] - stamps[0]) / 1000
    assert span_s >= 2.5, f"readings spread over {span_s:.1f}s, not written in one burst"
    assert 0.7 * RATE <= (written - 1) / span_s <= 1.3 * RATE, f"{written} in {span_s:.1f}s"
    # Steady: no second of the run goes without readings.
    seconds = {int((t - stamps[0]) // 1000) for t in stamps}
    assert seconds >= set(range(int(span_s))), sorted(seconds)
    for r in records:  # written when stamped: the Kafka timestamp agrees with the event time
        assert abs(r["timestamp"] - r["value"]["ts"]) < 1000, r
    assert {r["value"]["tag"] for r in records} == {f"sensor{i}" for i in range(1, 5)}
