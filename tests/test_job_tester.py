"""`weir.testing.JobTester`: a job's dataflow in process, without a broker.

Each test states a guarantee of the worker and checks that the tester, running the
worker's own slot and operator code, shows it: windows fire when the watermark passes
their end (from records, from `advance_watermark`, from idleness on the tester's
clock); timers fire in both time domains; failed records reach the dead-letter topic
with the worker's headers; keyed state is what the operators committed; results do not
depend on partitions, slots or repartition topics.
"""

from __future__ import annotations

import pytest

from weir import Job, KeyedProcessFunction, Session, Sliding, Tumbling
from weir.service.partitioner import partition_for
from weir.testing import JobTester, WorkerFailed


def windowed_counts(lateness: float = 0.0, late_topic: str | None = None, **source) -> Job:
    """Counts and sums per key (the record key) in 10 s tumbling windows."""
    job = Job("counts")
    (
        job.source("in", timestamp=lambda r: r["ts"], **source)
        .key_by()
        .window(Tumbling(seconds=10), allowed_lateness=lateness, late_topic=late_topic)
        .aggregate(count="count", total=("sum", "v"), name="per-window")
        .sink("out")
    )
    return job


def test_a_window_fires_once_the_watermark_passes_its_end():
    tester = JobTester(windowed_counts(max_out_of_orderness=2.0), start_time=0)
    tester.send("in", {"v": 1, "ts": 1_000}, key="a")
    tester.send("in", {"v": 2, "ts": 9_999}, key="a")
    tester.send("in", {"v": 5, "ts": 11_000}, key="b")
    assert tester.watermark == 9_000  # 11 s seen, minus 2 s out of orderness
    assert tester.output("out") == []
    tester.send("in", {"v": 1, "ts": 12_000}, key="b")  # watermark 10 s: [0, 10 s) fires
    assert tester.output("out") == [
        {"key": "a", "window_start": 0, "window_end": 10_000, "count": 2, "total": 3}
    ]
    (record,) = tester.output_records("out")
    assert (record.key, record.timestamp) == ("a", 9_999)  # keyed by the key, at the end


def test_advance_watermark_fires_due_windows_and_never_goes_back():
    tester = JobTester(windowed_counts(), start_time=0)
    tester.send("in", {"v": 1, "ts": 15_000}, key="a")
    tester.advance_watermark(19_999)
    assert [r["window_start"] for r in tester.output("out")] == [10_000]
    tester.advance_watermark(5_000)
    assert tester.watermark == 19_999


def test_late_records_within_allowed_lateness_update_the_result_later_ones_are_counted():
    tester = JobTester(windowed_counts(lateness=5.0, late_topic="late"), start_time=0)
    tester.send("in", {"v": 1, "ts": 1_000}, key="a")
    tester.advance_watermark(10_000)
    tester.send("in", {"v": 10, "ts": 2_000}, key="a")  # within the 5 s of lateness
    assert [r["total"] for r in tester.output("out")] == [1, 11]
    tester.advance_watermark(15_000)
    tester.send("in", {"v": 100, "ts": 3_000}, key="a")  # the window is gone
    assert [r["total"] for r in tester.output("out")] == [1, 11]
    assert tester.late("per-window") == 1 and tester.late() == 1
    (late,) = tester.output("late")
    assert late["record"] == {"v": 100, "ts": 3_000} and late["reason"].startswith("late")


def test_sliding_and_session_windows():
    job = Job("shapes")
    keyed = job.source("in", timestamp=lambda r: r["ts"]).key_by()
    keyed.window(Sliding(seconds=10, every=5)).aggregate(n="count").sink("sliding")
    keyed.window(Session(gap=3)).aggregate(n="count").sink("sessions")
    tester = JobTester(job, start_time=0)
    for ts in (1_000, 2_000, 4_500, 12_000):
        tester.send("in", {"ts": ts}, key="k")
    tester.advance_watermark(30_000)
    sliding = {(r["window_start"], r["window_end"]): r["n"] for r in tester.output("sliding")}
    assert sliding == {(-5_000, 5_000): 3, (0, 10_000): 3, (5_000, 15_000): 1, (10_000, 20_000): 1}
    sessions = [(r["window_start"], r["window_end"], r["n"]) for r in tester.output("sessions")]
    assert sessions == [(1_000, 7_500, 3), (12_000, 15_000, 1)]


class Reminder(KeyedProcessFunction):
    """Counts a key's records; reminds once per key: at event time ``ts + 1 s`` and
    5 s of processing time after its first record."""

    def process_element(self, value, ctx):
        seen = ctx.value_state("seen")
        seen.update(seen.value(0) + 1)
        ctx.list_state("values").add(value["v"])
        if seen.value() == 1:
            ctx.timers.register_event_time(value["ts"] + 1_000)
            ctx.timers.register_processing_time(ctx.timers.processing_time + 5_000)

    def on_timer(self, timestamp, ctx):
        ctx.emit(
            {"timer": ctx.time_domain, "at": timestamp, "seen": ctx.value_state("seen").value()}
        )


def reminders() -> Job:
    job = Job("reminders")
    (
        job.source("in", timestamp=lambda r: r["ts"])
        .key_by()
        .process(Reminder(), name="remind")
        .sink("out")
    )
    return job


def test_event_and_processing_time_timers_fire_and_state_shows_them():
    tester = JobTester(reminders(), start_time=100_000)
    tester.send("in", {"v": "x", "ts": 1_000}, key="a")
    tester.send("in", {"v": "y", "ts": 1_500}, key="a")
    assert tester.state("remind", "a") == {
        "key": "a",
        "value_state": {"seen": 2},
        "list_state": {"values": ["x", "y"]},
        "map_state": {},
        "timers": {"event": [2_000], "processing": [105_000]},
    }
    tester.advance_watermark(2_000)
    assert tester.output("out") == [{"timer": "event", "at": 2_000, "seen": 2}]
    tester.advance_time(4.999)
    assert len(tester.output("out")) == 1
    tester.advance_time(0.001)
    assert tester.output("out")[1:] == [{"timer": "processing", "at": 105_000, "seen": 2}]
    assert tester.now == 105_000
    assert tester.state("remind", "a")["timers"] == {"event": [], "processing": []}


def test_an_idle_partition_stops_holding_the_watermark_after_its_idle_timeout():
    tester = JobTester(windowed_counts(idle_timeout=5.0), partitions=2, start_time=0)
    tester.send("in", {"v": 1, "ts": 1_000}, key="a", partition=0)
    tester.send("in", {"v": 1, "ts": 20_000}, key="a", partition=0)
    assert tester.output("out") == []  # partition 1 has shown nothing: no watermark
    tester.advance_time(5.0)
    assert tester.output("out") == []  # idle only *after* 5 s
    tester.advance_time(0.01)
    assert [r["window_start"] for r in tester.output("out")] == [0]


def test_failed_records_go_to_the_dead_letter_topic_with_the_error():
    job = Job("failing")
    (
        job.source("in", timestamp=lambda r: r["ts"])
        .map(lambda r: {**r, "inverse": 1 / r["v"]}, name="invert")
        .sink("out")
    )
    tester = JobTester(job)
    tester.send("in", {"v": 2, "ts": 1}, key="ok")
    tester.send("in", b"{not json", key="bad")
    tester.send("in", {"v": 0, "ts": 2}, key="zero")
    tester.send("in", {"v": 1}, key="no-ts")
    assert tester.output("out") == [{"v": 2, "ts": 1, "inverse": 0.5}]
    decode, function, timestamp = tester.dead_letters
    assert (decode.reason, decode.operator, decode.value) == ("decode", "source-in", b"{not json")
    assert (function.reason, function.operator, function.offset) == ("function", "invert", 2)
    assert function.error.startswith("ZeroDivisionError") and function.key == b"zero"
    assert (timestamp.reason, timestamp.topic, timestamp.partition) == ("timestamp", "in", 0)
    assert tester.failed() == 3 and tester.failed("invert") == 1


def test_on_error_skip_counts_and_on_error_fail_raises():
    def job(policy: str) -> Job:
        j = Job("strict", on_error=policy)
        j.source("in").map(lambda r: r["missing"]).sink("out")
        return j

    skipping = JobTester(job("skip"))
    skipping.send("in", {"v": 1})
    assert skipping.dead_letters == [] and skipping.failed(reason="function") == 1
    with pytest.raises(WorkerFailed, match="KeyError"):
        JobTester(job("fail")).send("in", {"v": 1})


def test_keyed_state_is_what_the_operator_committed():
    job = Job("totals")
    job.source("in").key_by().aggregate(n="count", hi=("max", "v"), name="totals").sink("out")
    tester = JobTester(job, partitions=3)
    for key, v in [("a", 3), ("b", 1), ("a", 7)]:
        tester.send("in", {"v": v}, key=key)
    assert tester.state("totals", "a") == {"key": "a", "n": 2, "hi": 7}
    assert tester.state("totals", "nobody") is None
    assert tester.state_keys("totals") == ["a", "b"]
    assert tester.output("out")[-1] == {"key": "a", "n": 2, "hi": 7}
    with pytest.raises(ValueError, match=r"no stateful operator 'nope': \['totals'\]"):
        tester.state("nope", "a")
    elsewhere = (partition_for(b"a", 3) + 1) % 3  # records of one key in two partitions
    tester.send("in", {"v": 1}, key="a", partition=elsewhere)
    with pytest.raises(ValueError, match="pass partition="):
        tester.state("totals", "a")


def test_state_the_serde_cannot_store_fails_its_record():
    def add(acc: dict, r: dict) -> dict:
        return {"n": acc["n"] + r["n"], **({"tags": set(r["tags"])} if "tags" in r else {})}

    job = Job("sets")
    job.source("in").key_by().reduce(add, name="sum").sink("out")
    tester = JobTester(job)
    tester.send("in", {"n": 1}, key="a")  # the first value starts the reduce: JSON
    tester.send("in", {"n": 2, "tags": [1]}, key="a")  # a set is not JSON
    tester.send("in", {"n": 3}, key="a")
    assert tester.output("out") == [{"key": "a", "n": 1}, {"key": "a", "n": 4}]
    [letter] = tester.dead_letters
    assert (letter.reason, letter.operator, letter.offset) == ("state", "sum", 1)
    assert "cannot store the state of key 'a'" in letter.error and "set" in letter.error


def re_keyed(name: str) -> Job:
    """Readings keyed by a field: the window reads a repartition topic."""
    job = Job(name)
    (
        job.source("in", timestamp=lambda r: r["ts"])
        .key_by(lambda r: r["tag"], name="by-tag")
        .window(Tumbling(seconds=10))
        .aggregate(n="count", total=("sum", "v"), name="per-tag")
        .sink("out")
    )
    return job


def readings() -> list[dict]:
    return [{"tag": f"t{i % 7}", "v": i, "ts": 1_000 + 137 * i} for i in range(120)]


@pytest.mark.parametrize(("partitions", "slots"), [(1, 1), (4, 2), (2, 3)])
def test_results_do_not_depend_on_partitions_slots_or_the_repartition_topic(partitions, slots):
    tester = JobTester(re_keyed("re-keyed"), partitions=partitions, slots=slots, start_time=0)
    for i, r in enumerate(readings()):
        tester.send("in", r, partition=i % partitions)
    tester.advance_watermark(60_000)
    expected: dict[tuple[str, int], list[int]] = {}
    for r in readings():
        window = r["ts"] - r["ts"] % 10_000
        count, total = expected.get((r["tag"], window), [0, 0])
        expected[(r["tag"], window)] = [count + 1, total + r["v"]]
    got = {(r["key"], r["window_start"]): [r["n"], r["total"]] for r in tester.output("out")}
    assert len(tester.output("out")) == len(got)  # each window fired once
    assert got == expected
    assert tester.state_keys("per-tag") == []  # every window fired and was dropped


def test_windows_behind_a_union_wait_for_every_topic():
    """A union of two topics, key_by(fn), a window: the repartition partition's watermark
    is the minimum over both topics' partitions, so a window fires only once the topic
    behind has passed its end, and then holds the records of both."""
    job = Job("union-windows")
    a = job.source("a", timestamp=lambda r: r["ts"])
    b = job.source("b", timestamp=lambda r: r["ts"])
    (
        a.union(b)
        .key_by(lambda r: r["tag"])
        .window(Tumbling(seconds=10))
        .aggregate(n="count", name="per-tag")
        .sink("out")
    )
    tester = JobTester(job, start_time=0)
    tester.send("a", {"tag": "x", "ts": 1_000})
    tester.send("a", {"tag": "x", "ts": 25_000})
    tester.send("b", {"tag": "x", "ts": 2_000})
    assert tester.output("out") == [], "topic b is at 2 s: the window [0, 10 s) waits"
    tester.send("b", {"tag": "x", "ts": 8_000})
    tester.send("b", {"tag": "x", "ts": 12_000})
    assert [(r["window_start"], r["n"]) for r in tester.output("out")] == [(0, 3)]


def test_records_move_between_slots_by_key():
    job = Job("exchange")
    job.source("in").key_by(lambda r: r["user"]).map(lambda r: r["n"]).sink("out")
    tester = JobTester(job, slots=4)
    for n in range(40):
        tester.send("in", {"user": f"u{n % 5}", "n": n})
    assert sorted(tester.output("out")) == list(range(40))
    keys = {r.key for r in tester.output_records("out")}
    assert keys == {f"u{i}" for i in range(5)}


def test_mistakes_in_the_test_are_one_clear_line():
    tester = JobTester(windowed_counts(), partitions=2)
    with pytest.raises(ValueError, match=r"reads \['in'\]; not 'other'"):
        tester.send("other", {})
    with pytest.raises(ValueError, match=r"partitions 0\.\.1"):
        tester.send("in", {}, partition=2)
    with pytest.raises(ValueError, match=r"writes \['out'\]; not 'in'"):
        tester.output("in")
    with pytest.raises(ValueError, match=r"partitions for \['x'\]"):
        JobTester(windowed_counts(), partitions={"x": 2})
    with pytest.raises(ValueError, match=r"slots=0: expected an int >= 1"):
        JobTester(windowed_counts(), slots=0)
