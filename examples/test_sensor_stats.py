"""Tests of sensor_stats.py with Weir's job tester: no Kafka, no worker, plain pytest.

Copy this file next to your own job, point ``JOB`` at it and change the records and
the expectations. `JobTester` runs the job's operators as a worker runs them; each
``send`` is processed at once, then time moves on (the watermark as a worker computes
it) and a checkpoint completes, so outputs and state can be checked right away.
"""

from pathlib import Path

import pytest

from weir.testing import JobTester

JOB = Path(__file__).with_name("sensor_stats.py")


@pytest.fixture
def tester():
    # start_time: the processing time (epoch ms) the test starts at, for repeatable idleness
    with JobTester.from_file(JOB, start_time=0) as tester:
        yield tester


def reading(tag: str, value: object, ts: int) -> dict:
    return {"tag": tag, "value": value, "ts": ts}


def test_statistics_per_sensor_and_window(tester):
    tester.send("sensors", reading("s1", 20.0, 1_000))
    tester.send("sensors", reading("s2", 5.0, 2_000))
    tester.send("sensors", reading("s1", 30.0, 9_000))
    assert tester.output("sensor-stats") == []  # the watermark (9 s - 2 s) is inside the window
    tester.send("sensors", reading("s1", 40.0, 12_000))  # watermark 10 s: [0 s, 10 s) closes
    assert sorted(tester.output("sensor-stats"), key=lambda r: r["key"]) == [
        {"key": "s1", "window_start": 0, "window_end": 10_000,
         "count": 2, "mean": 25.0, "min": 20.0, "max": 30.0},
        {"key": "s2", "window_start": 0, "window_end": 10_000,
         "count": 1, "mean": 5.0, "min": 5.0, "max": 5.0},
    ]  # fmt: skip


def test_the_last_window_closes_once_the_sensors_fall_silent(tester):
    tester.send("sensors", reading("s1", 1.0, 1_000))
    tester.advance_time(5.5)  # idle_timeout=5.0: from here the watermark follows the clock
    assert tester.output("sensor-stats") == []
    tester.advance_time(11)  # watermark -1 s + 11 s: past the window's end
    assert [r["window_end"] for r in tester.output("sensor-stats")] == [10_000]


def test_readings_without_a_number_are_dropped_and_late_ones_counted(tester):
    tester.send("sensors", reading("s1", "n/a", 1_000))
    tester.send("sensors", reading("s1", 2.0, 15_000))
    tester.send("sensors", reading("s1", 3.0, 4_000))  # its window closed at watermark 10 s
    tester.advance_watermark(20_000)
    assert tester.output("sensor-stats") == [
        {"key": "s1", "window_start": 10_000, "window_end": 20_000,
         "count": 1, "mean": 2.0, "min": 2.0, "max": 2.0},
    ]  # fmt: skip
    assert tester.late() == 1


def test_bad_records_go_to_the_dead_letter_topic(tester):
    tester.send("sensors", b"not json")
    tester.send("sensors", {"tag": "s1", "value": 1.0})  # no "ts": no event time
    assert [(d.reason, d.offset) for d in tester.dead_letters] == [("decode", 0), ("timestamp", 1)]
