"""Event-time windows end to end on a real broker, checked against DuckDB.

The job (tests/jobs/windowed.py) keys ``{"tag", "value", "ts"}`` readings by the Kafka
key (the tag) and aggregates count/sum/min/max/mean per tumbling (10 s), sliding (10 s
every 2 s) or session (gap 5 s) window; watermark = min over active partitions of
(max ts - 2 s). DuckDB computes the same windows in one batch over the same input.

Lateness must be known independently of Weir, so the data are built to make it
unambiguous:

* phase A: every partition's readings are generated in event-time order and then
  disordered by at most out-of-orderness - 1 ms, so none of them can be late (the
  watermark never exceeds a partition's max - 2 s). Two partitions end early (they go
  idle and must stop holding the watermark back).
* once phase A is processed, a *closer* reading on partition 0 (30 min after the rest)
  pushes the watermark past every phase-A window: all of them must be emitted;
* phase B: readings at least 60 s older than anything the watermark has passed (surely
  late; on every partition) interleaved with fresh readings on partition 0 (10 min
  ahead: surely not late), then a second closer.

Every emitted window must equal DuckDB's (count/sum/min/max exactly: values are
multiples of 1/4, so float sums are exact; mean approximately), nothing missing,
nothing extra, no (key, window) twice; the late records are exactly phase B's late ones
(metric and late topic). Allowed lateness, exactly-once under kill -9, idle partitions
and the repartition path (key_by(fn)) have their own tests below. Every wait is bounded;
figures are printed (``-s``).
"""

from __future__ import annotations

import csv
import heapq
import math
import random
import re
import shutil
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import duckdb
import pytest
from confluent_kafka import Producer

from tests.feeding import Feeder, message, send
from tests.kafka_fixture import (
    committed_offsets,
    committed_reached,
    consume_all,
    end_offsets,
    produce_json,
)
from tests.reading import TopicReader
from tests.waiting import seconds_until, wait_for
from tests.workers import WorkerProcess, Workers, job_env, metric

JOB = "windowed.py"
JOB_NAME = "windowed"  # Job(...) name: the metrics' job label
OPERATOR = "stats"
SIZE, SLIDE, GAP = 10_000, 2_000, 5_000
OOO = 2_000  # max_out_of_orderness (ms), WEIR_TEST_OOO=2
T0 = 1_700_000_003_217  # deliberately not aligned to any window
KINDS = ("tumbling", "sliding", "session")
CHECKPOINT = ["--checkpoint-interval-ms", "200"]
# A killed worker's partitions move after the session timeout; keep it short.
SESSION = [
    "--kafka", "consumer.session.timeout.ms=6000",
    "--kafka", "consumer.heartbeat.interval.ms=1000",
]  # fmt: skip
CLOSER = "zz-closer"
# How far a closer is ahead of what came before it. While every partition is idle the
# watermark advances with the wall clock (the tracker's rule 5), and a pipeline that is
# done waits idle for the slowest one (up to a phase's timeout, 600 s): a closer nearer
# than that could be late when it arrives.
CLOSER_AHEAD_MS = 1_800_000
Key = tuple[str, int, int]  # (key, window_start, window_end)


# -- readings -------------------------------------------------------------------------


@dataclass
class Reading:
    tag: str
    value: float
    ts: int
    partition: int
    true_ts: int = 0  # generation time: the order readings are produced in
    # the watermark when Weir processes it, where the test knows it exactly: the reading
    # is left out of windows with end - 1 + allowed lateness <= wm (reference only)
    wm: int = -(2**62)
    lateness: int = 0

    def record(self) -> dict:
        return {"tag": self.tag, "value": self.value, "ts": self.ts}

    def key(self) -> bytes:
        return self.tag.encode()


# How a reading becomes a message (tests/feeding.py): the record keyed by its tag, on
# its partition.
AS_MESSAGE: dict[str, Any] = {
    "value": Reading.record,
    "key": Reading.key,
    "partition": attrgetter("partition"),
}


def partition_readings(
    rng: random.Random,
    partition: int,
    tags: list[str],
    start: int,
    end: int,
    disorder: int = OOO - 1,
) -> list[Reading]:
    """One partition's readings in production order, event times disordered by at most
    ``disorder`` ms: each tag has bursts (steps 20 ms .. 2.5 s) and pauses (3 .. 15 s,
    a fifth of them exactly gap - 1, gap or gap + 1 ms); some times sit on window
    boundaries; half the readings keep their exact time, a few are exactly
    ``disorder`` ms late."""
    events: list[tuple[int, str]] = []
    for tag in tags:
        t = start + rng.randrange(3000)
        burst_end = t + rng.randrange(5000, 60000)
        while t < end:
            if rng.random() < 0.03:
                t += -t % SLIDE  # onto a window boundary (start of a slide / tumble)
            elif rng.random() < 0.03:
                t += -(t + 1) % SLIDE  # the last ms of a window
            events.append((t, tag))
            if t >= burst_end:
                if rng.random() < 0.2:
                    t += rng.choice((GAP - 1, GAP, GAP + 1))
                else:
                    t += rng.randrange(3000, 15000)
                burst_end = t + rng.randrange(5000, 60000)
            else:
                t += rng.randrange(20, 2500)
    events.sort()
    out = []
    for true_ts, tag in events:
        u = rng.random()
        delay = 0 if u < 0.5 else disorder if u < 0.55 else rng.randrange(disorder + 1)
        value = rng.randrange(-4000, 4001) / 4  # exact in binary: sums are exact
        out.append(Reading(tag, value, true_ts - delay, partition, true_ts))
    return out


@dataclass
class Dataset:
    partitions: int
    a: list[Reading]  # phase A, every partition (some end early)
    closer1: Reading
    b_normal: list[Reading]  # partition 0 only, 10 min after closer1
    b_late: list[Reading]  # surely late, every partition
    closer2: Reading
    tags: dict[int, list[str]] = field(default_factory=dict)

    @property
    def max_a(self) -> int:
        return max(r.ts for r in self.a)

    def phase_b(self) -> list[Reading]:
        """B's readings in production order: late ones spread through the fresh ones."""
        out = list(self.b_normal)
        rng = random.Random(len(out))
        for r in self.b_late:
            out.insert(rng.randrange(len(out) + 1), r)
        return out

    def counted(self) -> list[Reading]:
        """Everything that must be in some window (all but the late readings)."""
        return [*self.a, self.closer1, *self.b_normal, self.closer2]


def generate(
    seed: int,
    target: int,
    partitions: int = 4,
    tags_per_partition: int = 12,
    ends: tuple[float, ...] = (1.0, 1.0, 0.7, 0.4),
    late: int = 400,
    fresh: int = 1000,
    weights: tuple[int, ...] = (1,),
) -> Dataset:
    """About ``target`` phase-A readings; partition p's readings stop at ``ends[p]`` of
    the duration (idle partitions), and it has ``weights[p]`` times the tags (and so
    the readings) of a partition of weight 1 — none at weight 0: it stays empty."""
    rng = random.Random(seed)
    ends = tuple(ends[p % len(ends)] for p in range(partitions))
    weights = tuple(weights[p % len(weights)] for p in range(partitions))
    rate = 0.63  # readings per second per tag, from the burst/pause/step distributions
    per_tag = sum(e * w for e, w in zip(ends, weights, strict=True)) * tags_per_partition
    duration = int(target / (rate * per_tag) * 1000)
    tags = {
        p: [f"s{p}-{i:03d}" for i in range(tags_per_partition * weights[p])]
        for p in range(partitions)
    }
    a: list[Reading] = []
    for p in range(partitions):
        a += partition_readings(rng, p, tags[p], T0, T0 + int(duration * ends[p]))
    max_a = max(r.ts for r in a)
    closer1 = Reading(CLOSER, 1.0, max_a + CLOSER_AHEAD_MS, 0, max_a + CLOSER_AHEAD_MS)
    b_start = closer1.ts + 600_000
    span = int(fresh / (rate * tags_per_partition) * 1200)
    b_normal = partition_readings(rng, 0, tags[0], b_start, b_start + span)[:fresh]
    max_b = max(r.ts for r in b_normal)
    b_late = []
    filled = [p for p in range(partitions) if tags[p]]
    for i in range(late):
        p = filled[i % len(filled)]
        ts = rng.randrange(T0 - 30_000, max_a - 60_000)
        b_late.append(Reading(rng.choice(tags[p]), rng.randrange(-400, 401) / 4, ts, p))
    closer2 = Reading(CLOSER, 2.0, max_b + CLOSER_AHEAD_MS, 0, max_b + CLOSER_AHEAD_MS)
    return Dataset(partitions, a, closer1, b_normal, b_late, closer2, tags)


def windows_of(kind: str, ts: int) -> list[tuple[int, int]]:
    """The windows a timestamp belongs to (sessions: its own [ts, ts + gap))."""
    if kind == "tumbling":
        start = ts - ts % SIZE
        return [(start, start + SIZE)]
    if kind == "sliding":
        last = ts - ts % SLIDE
        return [(s, s + SIZE) for s in range(last - SIZE + SLIDE, last + 1, SLIDE)]
    return [(ts, ts + GAP)]


# -- the reference: DuckDB ----------------------------------------------------------

Agg = tuple[int, float, float, float, float]  # count, sum, min, max, mean

SQL = {
    "tumbling": f"""
        SELECT tag, ts - ts % {SIZE} AS ws, ts - ts % {SIZE} + {SIZE} AS we,
               count(*), sum(value), min(value), max(value), avg(value)
        FROM readings WHERE ts - ts % {SIZE} + {SIZE} - 1 + lateness > wm GROUP BY ALL""",
    "sliding": f"""
        SELECT tag, ws, ws + {SIZE} AS we,
               count(*), sum(value), min(value), max(value), avg(value)
        FROM (SELECT tag, value, wm, lateness, unnest(generate_series(
                  ts - ts % {SLIDE} - {SIZE - SLIDE}, ts - ts % {SLIDE}, {SLIDE})) AS ws
              FROM readings)
        WHERE ws + {SIZE} - 1 + lateness > wm
        GROUP BY ALL""",
    # gaps and islands: a reading starts a new session when it is a gap or more after
    # the previous reading of its tag
    "session": f"""
        WITH marked AS (
            SELECT *, CASE WHEN ts - lag(ts) OVER (PARTITION BY tag ORDER BY ts) < {GAP}
                           THEN 0 ELSE 1 END AS starts
            FROM readings WHERE ts + {GAP} - 1 + lateness > wm),
        numbered AS (
            SELECT *, sum(starts) OVER (PARTITION BY tag ORDER BY ts
                                        ROWS UNBOUNDED PRECEDING) AS session
            FROM marked)
        SELECT tag, min(ts) AS ws, max(ts) + {GAP} AS we,
               count(*), sum(value), min(value), max(value), avg(value)
        FROM numbered GROUP BY tag, session""",
}


def reference(kind: str, readings: Iterable[Reading], tmp: Path) -> dict[Key, Agg]:
    """DuckDB's windows over ``readings``: (key, start, end) -> aggregates. A reading
    with a known watermark ``wm`` is left out of the windows that were gone at it
    (sessions: when its own window [ts, ts + gap) was)."""
    path = tmp / f"readings-{uuid.uuid4().hex}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tag", "value", "ts", "wm", "lateness"])
        for r in readings:
            w.writerow([r.tag, repr(r.value), r.ts, r.wm, r.lateness])
    con = duckdb.connect()
    try:
        con.execute(
            "CREATE TABLE readings AS SELECT * FROM read_csv(?, header = true,"
            " columns = {'tag': 'VARCHAR', 'value': 'DOUBLE', 'ts': 'BIGINT',"
            " 'wm': 'BIGINT', 'lateness': 'BIGINT'})",
            [str(path)],
        )
        rows = con.execute(SQL[kind]).fetchall()
    finally:
        con.close()
        path.unlink()
    return {(t, ws, we): (c, s, lo, hi, mean) for t, ws, we, c, s, lo, hi, mean in rows}


def agg_of(value: dict) -> Agg:
    return (value["count"], value["sum"], value["min"], value["max"], value["mean"])


def same(got: Agg, want: Agg) -> bool:
    return got[:4] == want[:4] and math.isclose(got[4], want[4], rel_tol=1e-9, abs_tol=1e-9)


def compare(
    kind: str, emitted: list[dict], want: dict[Key, Agg], optional: set[Key] = frozenset()
) -> dict[str, Any]:
    """Emitted windows vs the reference, each (key, window) exactly once. ``optional``
    windows may be missing (they need a watermark the test does not wait for)."""
    seen: Counter[Key] = Counter()
    wrong: list[str] = []
    for v in emitted:
        k = (v["key"], v["window_start"], v["window_end"])
        seen[k] += 1
        if k in want and not same(agg_of(v), want[k]) and len(wrong) < 5:
            wrong.append(f"{k}: got {agg_of(v)} want {want[k]}")
    missing = [k for k in want if k not in seen and k not in optional]
    extra = [k for k in seen if k not in want]
    twice = [k for k, n in seen.items() if n > 1]
    return {
        "kind": kind,
        "emitted": len(emitted),
        "expected": len(want) - len(optional & want.keys()),
        "missing": len(missing),
        "extra": len(extra),
        "duplicated": len(twice),
        "wrong": len(wrong),
        "examples": {"missing": sorted(missing)[:5], "extra": sorted(extra)[:5],
                     "duplicated": sorted(twice)[:5], "wrong": wrong},
    }  # fmt: skip


def assert_matches(problems: dict[str, Any]) -> None:
    bad = {k: problems[k] for k in ("missing", "extra", "duplicated", "wrong") if problems[k]}
    assert not bad, f"{problems['kind']} windows differ from DuckDB: {problems}"


# -- Kafka helpers -------------------------------------------------------------------


def produce_readings(bootstrap: str, topic: str, readings: Iterable[Reading]) -> None:
    """The readings, one partition after the other, each in the given order."""
    in_order = sorted(readings, key=attrgetter("partition"))  # stable: order kept
    produce_json(bootstrap, topic, in_order, timeout=120, **AS_MESSAGE)


# -- a windowed job per kind -----------------------------------------------------------


class Pipeline:
    """One worker group running the windowed job for one window kind, its output and
    late topics, and readers of both."""

    def __init__(
        self,
        kind: str,
        bootstrap: str,
        new_topic: Callable[..., str],
        src: str,
        logs: Path,
        state: Path,
        lateness: float = 0,
        idle: float = 1,
        key_by_tag: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.kind, self.bootstrap, self.src = kind, bootstrap, src
        self.out = new_topic(partitions=2, prefix=f"out-{kind}")
        self.late = new_topic(partitions=1, prefix=f"late-{kind}")
        self.group = f"et-{kind}-{uuid.uuid4().hex[:10]}"
        self.env = job_env(in_=src, out=self.out, late=self.late, window=kind,
                           lateness=lateness, idle=idle, ooo=OOO / 1000,
                           key_by="tag" if key_by_tag else "") | (env or {})  # fmt: skip
        self.state = state / kind
        self.workers = Workers(
            JOB, bootstrap, self.group, self.env,
            [*CHECKPOINT, *SESSION, "--state-dir", str(self.state)], logs / kind,
        )  # fmt: skip
        self.worker: WorkerProcess | None = None
        self.output = TopicReader(bootstrap, self.out)
        self.late_reader = TopicReader(bootstrap, self.late)

    @property
    def incarnations(self) -> int:
        return self.workers.incarnations["w1"]

    def start(self) -> WorkerProcess:
        self.worker = self.workers.start("w1")
        return self.worker

    def kill(self) -> None:
        self.workers.kill("w1")

    def check_alive(self) -> None:
        self.workers.check_alive()

    def late_metric(self) -> float:
        text = self.worker.metrics()
        return metric(text, "weir_records_late_total", weir_job=JOB_NAME, operator=OPERATOR)

    def processed(self) -> bool:
        self.check_alive()
        return committed_reached(self.bootstrap, self.group, self.src)

    def poll(self) -> None:
        self.output.poll(0.1)
        self.late_reader.poll(0.05)

    def late_summary(self) -> str:
        """Late records per partition of their key, and a few of them."""
        per = Counter(r["key"].split("-")[0] for r in self.late_reader.records)
        some = [(r["key"], r["value"]["timestamp"], r["value"]["reason"])
                for r in self.late_reader.records[:3]]  # fmt: skip
        return f"(by tag prefix {dict(per)}; e.g. {some})"

    def emitted_keys(self) -> set[Key]:
        return {(v["key"], v["window_start"], v["window_end"]) for v in self.output.values()}

    def stop(self) -> None:
        if "w1" in self.workers.live:
            self.workers.stop("w1")

    def close(self) -> None:
        self.workers.close()
        self.output.close()
        self.late_reader.close()

    def diagnose(self) -> str:
        """For failure messages: what the output holds and what the worker says."""
        try:
            committed = len(consume_all(self.bootstrap, self.out, None, 15, partial=True))
            written = len(consume_all(self.bootstrap, self.out, None, 15, False, partial=True))
        except Exception as exc:
            committed = written = f"? ({exc})"
        wanted = ("weir_watermark_lag_seconds", "weir_records_out_total", "weir_checkpoints_total",
                  "weir_records_late_total", "weir_consumer_lag")  # fmt: skip
        try:
            lines = [ln for ln in self.worker.metrics().splitlines() if ln.startswith(wanted)]
        except OSError as exc:
            lines = [f"no metrics: {exc}"]
        return (
            f"\n[{self.kind}] output: {committed} committed, {written} written;"
            f" this reader has {len(self.output.records)}; worker: {lines}"
        )

    def logs_tail(self) -> str:
        return self.workers.logs_tail(20)


def wait_windows(pipes: list[Pipeline], want: dict[str, set[Key]], timeout: float) -> float:
    """Until every pipeline has emitted every window in ``want[kind]``."""

    def done() -> bool:
        ok = True
        for pipe in pipes:
            pipe.poll()
            ok &= want[pipe.kind] <= pipe.emitted_keys()
        return ok

    def detail() -> str:
        return "; ".join(
            f"{p.kind}: {len(want[p.kind] - p.emitted_keys())} of {len(want[p.kind])} missing,"
            f" e.g. {sorted(want[p.kind] - p.emitted_keys())[:3]};"
            f" {len(p.late_reader.records)} records on the late topic so far"
            f" {p.late_summary()}{p.diagnose()}{p.logs_tail()}"
            for p in pipes
        )

    def check() -> None:
        for p in pipes:
            p.check_alive()

    return seconds_until(
        done, timeout, "windows", every=0.05, check=check, detail=lambda: "\n" + detail()
    )


def wait_processed(pipes: list[Pipeline], timeout: float) -> float:
    return seconds_until(
        lambda: all(p.processed() for p in pipes),
        timeout,
        "input processed (offsets committed)",
        every=0.3,
        detail=lambda: "\n" + "".join(p.logs_tail() for p in pipes),
    )


def late_ids(readings: Iterable[Reading]) -> Counter:
    return Counter((r.tag, r.ts, r.value) for r in readings)


def late_topic_ids(pipe: Pipeline) -> Counter:
    return Counter(
        (r["key"], r["value"]["timestamp"], r["value"]["record"]["value"])
        for r in pipe.late_reader.records
    )


# -- the scenario shared by the DuckDB and the kill tests ---------------------------------


def run_scenario(
    data: Dataset,
    kinds: Iterable[str],
    bootstrap: str,
    new_topic: Callable[..., str],
    tmp_path: Path,
    feed: Callable[[list[Pipeline], str], None] | None = None,
    timeout: float = 120,
    key_by_tag: bool = False,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Phase A (pre-produced, or fed live by ``feed`` while it kills workers), closer 1,
    phase B, closer 2; then compare every pipeline's windows with DuckDB."""
    started = time.monotonic()
    src = new_topic(partitions=data.partitions, prefix="readings")
    pipes: list[Pipeline] = []
    figures: dict[str, Any] = {"readings": len(data.a) + len(data.b_normal) + 2,
                               "late": len(data.b_late)}  # fmt: skip
    try:
        if feed is None:
            produce_readings(bootstrap, src, data.a)
        for kind in kinds:
            pipes.append(
                Pipeline(kind, bootstrap, new_topic, src, tmp_path / "logs",
                         tmp_path / "state", key_by_tag=key_by_tag, env=env)
            )  # fmt: skip
        for pipe in pipes:
            pipe.start()
        for pipe in pipes:
            pipe.worker.wait_running(60)
        if feed is not None:
            feed(pipes, src)
        figures["phase_a_processed_s"] = round(wait_processed(pipes, timeout), 1)
        for pipe in pipes:  # fail fast: no reading of phase A can be late
            pipe.late_reader.drain()
            assert not pipe.late_reader.records, (
                f"{pipe.kind}: {len(pipe.late_reader.records)} readings of phase A (all within"
                f" the out-of-orderness bound of their partition) were late"
                f" {pipe.late_summary()}{pipe.diagnose()}{pipe.logs_tail()}"
            )

        # closer 1: the watermark passes every phase-A window
        produce_readings(bootstrap, src, [data.closer1])
        want_a = {k: set(reference(k, data.a, tmp_path)) for k in kinds}
        figures["phase_a_windows_s"] = round(wait_windows(pipes, want_a, 60), 1)

        # phase B: surely late readings among fresh ones, then closer 2
        produce_readings(bootstrap, src, data.phase_b())
        wait_processed(pipes, timeout)
        produce_readings(bootstrap, src, [data.closer2])
        final = {k: reference(k, data.counted(), tmp_path) for k in kinds}
        last = {  # closer 2's own windows need a watermark beyond it: optional
            k: {(CLOSER, s, e) for s, e in windows_of(k, data.closer2.ts)}
            if k != "session" else {(CLOSER, data.closer2.ts, data.closer2.ts + GAP)}
            for k in kinds
        }  # fmt: skip
        required = {k: set(final[k]) - last[k] for k in kinds}
        figures["phase_b_windows_s"] = round(wait_windows(pipes, required, 60), 1)
        want_late = late_ids(data.b_late)
        for pipe in pipes:
            wait_for(
                lambda p=pipe: (p.poll(), len(p.late_reader.records) >= len(data.b_late))[1],
                30,
                f"{pipe.kind}: {len(data.b_late)} late records on the late topic",
            )
        metrics = {p.kind: p.late_metric() for p in pipes}
        for pipe in pipes:
            pipe.output.drain()
            pipe.late_reader.drain()
        for pipe in pipes:
            problems = compare(pipe.kind, pipe.output.values(), final[pipe.kind], last[pipe.kind])
            figures[pipe.kind] = {
                "windows_compared": problems["emitted"],
                "windows_expected": problems["expected"],
                "incarnations": pipe.incarnations,
                "late_metric": metrics[pipe.kind],
            }
            print(f"{pipe.kind}: {problems}")
            assert_matches(problems)
            got_late = late_topic_ids(pipe)
            assert got_late == want_late, (
                f"{pipe.kind}: late topic differs: {sum((got_late - want_late).values())}"
                f" unexpected (e.g. {list(got_late - want_late)[:3]}),"
                f" {sum((want_late - got_late).values())} missing"
                f" (e.g. {list(want_late - got_late)[:3]})"
            )
            for r in pipe.late_reader.records:
                assert r["value"]["reason"].startswith("late: timestamp"), r
            if pipe.incarnations == 1:
                assert metrics[pipe.kind] == len(data.b_late), (
                    f"{pipe.kind}: weir_records_late_total={metrics[pipe.kind]},"
                    f" expected {len(data.b_late)}"
                )
        for pipe in pipes:
            pipe.stop()
    finally:
        for pipe in pipes:
            pipe.close()
    figures["total_s"] = round(time.monotonic() - started, 1)
    print(f"figures: {figures}")
    return figures


# -- 1. correctness against DuckDB ---------------------------------------------------------


def test_windows_match_duckdb(kafka_bootstrap, new_topic, tmp_path):
    """~25k readings over 4 partitions (2 going idle early), 48 tags: tumbling, sliding
    and session windows equal DuckDB's; exactly the 400 surely-late readings are late."""
    data = generate(seed=1, target=25_000)
    run_scenario(data, KINDS, kafka_bootstrap, new_topic, tmp_path)


def test_a_failed_commit_during_catch_up_changes_no_window(kafka_bootstrap, new_topic, tmp_path):
    """A checkpoint commit fails once while the backlog is caught up (a test hook): the
    rollback rewinds event time to the last committed checkpoint, so no replayed reading
    is late, and every window still equals DuckDB's."""
    data = generate(seed=3, target=20_000)
    figures = run_scenario(data, KINDS, kafka_bootstrap, new_topic, tmp_path,
                           env={"WEIR_FAULT_INJECT": "fail-commit:3"})  # fmt: skip
    assert all(figures[kind]["incarnations"] == 1 for kind in KINDS), "rolled back in-process"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_windows_match_duckdb_large(kafka_bootstrap, new_topic, tmp_path):
    """~300k readings over 8 partitions, 160 tags, 3000 late ones."""
    data = generate(
        seed=2,
        target=300_000,
        partitions=8,
        tags_per_partition=20,
        ends=(1.0, 1.0, 0.9, 0.5, 1.0, 0.8, 0.3, 1.0),
        late=3000,
        fresh=5000,
    )
    run_scenario(data, KINDS, kafka_bootstrap, new_topic, tmp_path, timeout=600)


# -- 3. exactly once under kill -9 ----------------------------------------------------------


def interleaved(readings: list[Reading]) -> list[Reading]:
    """All partitions' readings merged by generation time (each partition's order kept)."""
    per: dict[int, list[Reading]] = defaultdict(list)
    for r in readings:
        per[r.partition].append(r)
    return list(heapq.merge(*per.values(), key=lambda r: r.true_ts))


def killing_feed(
    rate: float, kills: list[tuple[float, str]], seed: int, record: dict[str, Any]
) -> Callable[[list[Pipeline], str], None]:
    """A ``feed`` for `run_scenario`: phase A produced live at ``rate``/s; at each
    (fraction of the feed, kind) that kind's worker gets kill -9 and is restarted at
    once on the same state dir (its partitions come back after the session timeout)."""

    def feed(pipes: list[Pipeline], src: str) -> None:
        rng = random.Random(seed)
        by_kind = {p.kind: p for p in pipes}
        data = record["data"]
        feeder = Feeder(pipes[0].bootstrap, src, interleaved(data.a), rate, **AS_MESSAGE)
        feeder.start()
        try:
            for fraction, kind in sorted(kills):
                due = int(fraction * len(data.a))
                wait_for(
                    lambda d=due: feeder.sent >= d or not feeder.is_alive(),
                    len(data.a) / rate + 60,
                    f"feeder reaching {due}",
                    every=0.05,
                    check=lambda: [p.check_alive() for p in pipes] and None,
                )
                pipe = by_kind[kind]
                pipe.kill()
                record.setdefault("kills", []).append((kind, feeder.sent))
                time.sleep(rng.uniform(0, 0.5))
                pipe.start()
            feeder.finish(len(data.a) / rate + 60)
        finally:
            if feeder.is_alive():
                feeder.halt()

    return feed


def test_windows_exactly_once_with_kills(kafka_bootstrap, new_topic, tmp_path):
    """~20k readings fed live at 1000/s; the tumbling and the session worker are each
    killed (kill -9) twice and restarted: every window exactly once and equal to
    DuckDB's, the late topic holds exactly the late readings once each."""
    data = generate(seed=3, target=20_000, late=200, fresh=500)
    record: dict[str, Any] = {"data": data}
    kills = [(0.25, "tumbling"), (0.35, "session"), (0.6, "tumbling"), (0.7, "session")]
    feed = killing_feed(1000, kills, seed=3, record=record)
    figures = run_scenario(
        data, ("tumbling", "session"), kafka_bootstrap, new_topic, tmp_path, feed=feed
    )
    print(f"kills: {record['kills']}")
    assert figures["tumbling"]["incarnations"] == 3 and figures["session"]["incarnations"] == 3


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_windows_exactly_once_with_kills_large(kafka_bootstrap, new_topic, tmp_path):
    """~80k readings fed live at 1500/s over 6 partitions; all three kinds, each worker
    killed three times at staggered moments."""
    data = generate(
        seed=4, target=80_000, partitions=6, tags_per_partition=16,
        ends=(1.0, 1.0, 0.6, 1.0, 0.35, 1.0), late=1000, fresh=2000,
    )  # fmt: skip
    record: dict[str, Any] = {"data": data}
    kills = [(f + i * 0.05, kind) for f in (0.15, 0.45, 0.75) for i, kind in enumerate(KINDS)]
    feed = killing_feed(1500, kills, seed=4, record=record)
    figures = run_scenario(
        data, KINDS, kafka_bootstrap, new_topic, tmp_path, feed=feed, timeout=300
    )
    print(f"kills: {record['kills']}")
    assert all(figures[k]["incarnations"] == 4 for k in KINDS)


# -- 2. allowed lateness ---------------------------------------------------------------------


def is_late(kind: str, ts: int, watermark: int, lateness: int) -> bool:
    """Every window of ``ts`` has end - 1 + lateness <= watermark."""
    return all(e - 1 + lateness <= watermark for _, e in windows_of(kind, ts))


def sessions_of(readings: Iterable[Reading]) -> dict[str, list[tuple[int, int]]]:
    """Per tag, its sessions [first ts, last ts + gap) by gaps and islands."""
    by_tag: dict[str, list[int]] = defaultdict(list)
    for r in readings:
        by_tag[r.tag].append(r.ts)
    out: dict[str, list[tuple[int, int]]] = {}
    for tag, stamps in by_tag.items():
        stamps.sort()
        spans = [[stamps[0], stamps[0]]]
        for ts in stamps[1:]:
            if ts - spans[-1][1] < GAP:
                spans[-1][1] = ts
            else:
                spans.append([ts, ts])
        out[tag] = [(s, last + GAP) for s, last in spans]
    return out


def edge_of(rng: random.Random, partition: int, tags: list[str], end: int, edge: int,
            tag: str) -> list[Reading]:  # fmt: skip
    """Readings up to ``edge`` - 3 s, then ``tag`` alone at edge - gap + 1 (so its
    window and its session end exactly at ``edge`` + 1), then the partition's max at
    edge + out-of-orderness: once both partitions are read, the watermark is ``edge``."""
    out = partition_readings(rng, partition, tags, end, edge - 3000)
    out.append(Reading(tag, 0.5, edge - GAP + 1, partition, edge - GAP + 1))
    out.append(Reading(tags[0], 0.25, edge + OOO, partition, edge + OOO))
    return out


@pytest.mark.timeout(240)
def test_allowed_lateness_updates_and_late_topic(kafka_bootstrap, new_topic, tmp_path):
    """Allowed lateness 5 s, idle timeout 1 h (the watermark moves only with the data, so
    it is known exactly between phases): records behind the watermark but within the
    lateness update their windows (the last emission of every window equals DuckDB over
    every record not late), later ones go to the late topic with the reason and the
    watermark, and nothing fires before the watermark reaches it."""
    lateness = 5000
    rng = random.Random(5)
    tags = {p: [f"s{p}-{i}" for i in range(6)] for p in range(2)}
    e1 = T0 + 300_000 - (T0 + 300_000) % SIZE + SIZE - 1  # end - 1 of a tumbling window
    e3 = e1 + 120_000
    phase1 = [r for p in range(2) for r in edge_of(rng, p, tags[p], T0, e1, f"edge{p}")]
    # phase 2, at watermark e1: old records on both partitions
    dropped = {  # sessions fired and forgotten by e1: DuckDB would merge records into them
        tag: [(s, e) for s, e in spans if e - 1 + lateness <= e1]
        for tag, spans in sessions_of(phase1).items()
    }
    phase2: list[Reading] = []
    while len(phase2) < 400:
        p = rng.randrange(2)
        tag, ts = rng.choice(tags[p]), rng.randrange(e1 - 30_000, e1 + 1)
        if any(ts < e and s < ts + GAP for s, e in dropped.get(tag, ())):
            continue  # would bridge into a forgotten session: DuckDB cannot model that
        phase2.append(Reading(tag, rng.randrange(-400, 401) / 4, ts, p, wm=e1, lateness=lateness))
    # phase 3: the data move on to watermark e3; phase 4: records beyond the lateness
    phase3 = [r for p in range(2) for r in edge_of(rng, p, tags[p], e1 + OOO + 1, e3, f"edge{p}")]
    phase4 = [
        Reading(rng.choice(tags[p]), 9.0, rng.randrange(e1 - 30_000, e3 - 20_000), p)
        for p in (0, 1) for _ in range(50)
    ]  # fmt: skip
    src = new_topic(partitions=2, prefix="readings")
    pipes = [
        Pipeline(kind, kafka_bootstrap, new_topic, src, tmp_path / "logs", tmp_path / "st",
                 lateness=lateness / 1000, idle=3600)
        for kind in KINDS
    ]  # fmt: skip
    figures: dict[str, Any] = {}
    try:
        produce_readings(kafka_bootstrap, src, phase1)
        for pipe in pipes:
            pipe.start()
        ref1 = {k: reference(k, phase1, tmp_path) for k in KINDS}
        wait_windows(pipes, {k: {w for w in ref1[k] if w[2] - 1 <= e1} for k in KINDS}, 60)
        for pipe in pipes:
            pipe.output.poll(0.5)
            beyond = [v for v in pipe.output.values() if v["window_end"] - 1 > e1]
            assert not beyond, f"{pipe.kind}: fired before the watermark: {beyond[:3]}"
        emitted_before = {p.kind: len(p.output.records) for p in pipes}

        produce_readings(kafka_bootstrap, src, phase2)
        wait_processed(pipes, 60)
        produce_readings(kafka_bootstrap, src, phase3)
        late2 = {k: [r for r in phase2 if is_late(k, r.ts, e1, lateness)] for k in KINDS}
        kept = {k: [*phase1, *(r for r in phase2 if not is_late(k, r.ts, e1, lateness)), *phase3]
                for k in KINDS}  # fmt: skip
        final = {k: reference(k, kept[k], tmp_path) for k in KINDS}
        due = {k: {w for w in final[k] if w[2] - 1 <= e3} for k in KINDS}
        wait_windows(pipes, due, 60)
        produce_readings(kafka_bootstrap, src, phase4)
        for pipe in pipes:
            n = len(late2[pipe.kind]) + len(phase4)
            wait_for(
                lambda p=pipe, n=n: (p.poll(), len(p.late_reader.records) >= n)[1],
                60,
                f"{pipe.kind}: {n} late records",
                check=pipe.check_alive,
            )
        wait_processed(pipes, 60)
        metrics = {p.kind: p.late_metric() for p in pipes}
        for pipe in pipes:
            pipe.output.drain()
            pipe.late_reader.drain()

        for pipe in pipes:
            kind = pipe.kind
            records = sorted(pipe.output.records, key=lambda r: (r["partition"], r["offset"]))
            history: dict[Key, list[Agg]] = defaultdict(list)
            for r in records:
                v = r["value"]
                history[(v["key"], v["window_start"], v["window_end"])].append(agg_of(v))
            early = [w for w in history if w[2] - 1 > e3]
            assert not early, f"{kind}: fired before the watermark reached end - 1: {early[:3]}"
            missing = due[kind] - set(history)
            assert not missing, (
                f"{kind}: {len(missing)} windows never emitted: {sorted(missing)[:3]}"
            )
            wrong = [(w, history[w][-1], final[kind][w]) for w in due[kind]
                     if not same(history[w][-1], final[kind][w])]  # fmt: skip
            assert not wrong, f"{kind}: last emission differs from DuckDB: {wrong[:3]}"
            if kind == "session":  # superseded sessions lie inside a final one of their key
                finals = defaultdict(list)
                for tag, s, e in final[kind]:
                    finals[tag].append((s, e))
                stray = [w for w in set(history) - due[kind]
                         if not any(s <= w[1] and w[2] <= e for s, e in finals[w[0]])]  # fmt: skip
                assert not stray, f"session: emitted sessions inside no final one: {stray[:3]}"
            else:
                assert set(history) == due[kind], f"{kind}: extra {set(history) - due[kind]}"
            updated = {w for w, h in history.items() if len(h) > 1}
            figures[kind] = {
                "windows_compared": len(due[kind]),
                "emissions": len(records),
                "emissions_before_phase2": emitted_before[kind],
                "windows_updated": len(updated),
                "late_phase2": len(late2[kind]),
                "within_lateness_phase2": len(phase2) - len(late2[kind]),
                "late_metric": metrics[kind],
            }
            if kind == "tumbling":
                check_tumbling_updates(history, phase1, phase2, e1, lateness)
            # the late topic: exactly the late records, with the watermark they missed
            want_late = late_ids([*late2[kind], *phase4])
            got_late = late_topic_ids(pipe)
            assert got_late == want_late, (
                f"{kind}: late topic: {sum((got_late - want_late).values())} unexpected,"
                f" {sum((want_late - got_late).values())} missing"
            )
            marks = Counter(
                int(re.search(r"at watermark (-?\d+)", r["value"]["reason"]).group(1))
                for r in pipe.late_reader.records
            )
            assert marks == Counter({e1: len(late2[kind]), e3: len(phase4)}), marks
            assert metrics[kind] == len(want_late), (kind, metrics[kind], len(want_late))
        for pipe in pipes:
            pipe.stop()
    finally:
        for pipe in pipes:
            pipe.close()
    print(f"figures: {figures}")


def check_tumbling_updates(
    history: dict[Key, list[Agg]], phase1: list[Reading], phase2: list[Reading], e1: int,
    lateness: int,
) -> None:  # fmt: skip
    """Tumbling: a window fired before phase 2 is re-emitted once per record of phase 2
    it takes, each emission over the records so far; a window phase 2 creates behind the
    watermark may be emitted later (at the next watermark), but only ever with a result
    over a prefix of its records."""
    first: dict[Key, list[float]] = defaultdict(list)
    for r in phase1:
        first[windows_key(r)].append(r.value)
    later: dict[Key, list[float]] = defaultdict(list)
    for r in phase2:  # production order = partition order, and a tag has one partition
        if not is_late("tumbling", r.ts, e1, lateness):
            later[windows_key(r)].append(r.value)
    for w, values in later.items():
        prefixes = [stats(first[w] + values[:i]) for i in range(len(values) + 1) if
                    first[w] or i]  # fmt: skip
        got = history[w]
        if first[w] and w[2] - 1 <= e1:  # fired before phase 2: one update per record
            assert len(got) == 1 + len(values), f"{w}: {len(got)} emissions, {len(values)} updates"
            assert all(same(g, p) for g, p in zip(got, prefixes, strict=True)), (w, got)
        else:
            assert all(any(same(g, p) for p in prefixes) for g in got), (w, got)
            assert same(got[-1], prefixes[-1]), (w, got)


def windows_key(r: Reading) -> Key:
    (s, e) = windows_of("tumbling", r.ts)[0]
    return (r.tag, s, e)


def stats(values: list[float]) -> Agg:
    return (len(values), sum(values), min(values), max(values), sum(values) / len(values))


# -- the repartition path: key_by(fn) -----------------------------------------------------------


def test_windows_through_repartition_topic_match_duckdb(kafka_bootstrap, new_topic, tmp_path):
    """The path of examples/sensor_stats.py: readings keyed by ``key_by(lambda r:
    r["tag"])`` reach the windows through the repartition topic, pre-produced as a backlog
    (each partition's readings within the out-of-orderness bound, two going idle early).
    The watermark flows through the repartition topic, so, as with the record key,
    exactly the surely-late readings are late and every window equals DuckDB's."""
    data = generate(seed=6, target=20_000, late=200, fresh=500)
    run_scenario(
        data,
        ("tumbling", "session"),
        kafka_bootstrap,
        new_topic,
        tmp_path,
        key_by_tag=True,
    )


class TagWindows:
    """One worker group running tests/jobs/windows_by_tag.py (tumbling, sliding and
    session windows, each behind its own repartition topic) over ``src``, and readers
    of each window's output and late topic."""

    def __init__(
        self,
        bootstrap: str,
        new_topic: Callable[..., str],
        src: str,
        tmp: Path,
        repartitions: int,
        slots: int = 2,
    ) -> None:
        self.bootstrap, self.src = bootstrap, src
        self.outs = {k: new_topic(partitions=2, prefix=f"out-{k}") for k in KINDS}
        self.lates = {k: new_topic(partitions=1, prefix=f"late-{k}") for k in KINDS}
        self.group = f"et-tags-{uuid.uuid4().hex[:10]}"
        env = job_env(in_=src, ooo=OOO / 1000, idle=1, repartitions=repartitions)
        for k in KINDS:
            env |= job_env(**{f"out_{k}": self.outs[k], f"late_{k}": self.lates[k]})
        args = [
            *CHECKPOINT, *SESSION, "--slots", str(slots), "--state-dir", str(tmp / "state"),
            # room for three windows' backlogs on a loaded machine: a checkpoint waiting
            # seconds on a slot is slow, not stuck
            "--checkpoint-timeout-ms", "30000",
        ]  # fmt: skip
        self.workers = Workers("windows_by_tag.py", bootstrap, self.group, env, args, tmp / "logs")
        self.output = {k: TopicReader(bootstrap, t) for k, t in self.outs.items()}
        self.late = {k: TopicReader(bootstrap, t) for k, t in self.lates.items()}

    def progress(self, topic: str | None = None) -> float:
        """The share of ``topic``'s records (default: the source's) the group has
        committed; a transaction's commit marker after the last record counts as read."""
        topic = topic or self.src
        ends = end_offsets(self.bootstrap, topic)
        done = committed_offsets(self.bootstrap, self.group, topic)
        slack = 0 if topic == self.src else 1
        read = sum(min(done[p] + slack if done[p] else 0, end) for p, end in ends.items())
        return read / max(1, sum(ends.values()))

    def stage_progress(self) -> float:
        """How far the slower stage has got: the source, or the windows behind the
        repartition topics (which trail it)."""
        topics = [self.src, *(f"{self.group}.by-tag-{k}.repartition" for k in KINDS)]
        return min(self.progress(t) for t in topics)

    def emitted(self, kind: str) -> set[Key]:
        return {(v["key"], v["window_start"], v["window_end"]) for v in self.output[kind].values()}

    def wait_windows(self, want: dict[str, set[Key]], timeout: float) -> float:
        def done() -> bool:
            for reader in (*self.output.values(), *self.late.values()):
                reader.poll(0.02)
            return all(want[k] <= self.emitted(k) for k in want)

        def detail() -> str:
            return (
                "; ".join(
                    f"{k}: {len(want[k] - self.emitted(k))} of {len(want[k])} missing, e.g."
                    f" {sorted(want[k] - self.emitted(k))[:2]}, {len(self.late[k].records)} late"
                    f" {self.late_summary(k)}"
                    for k in want
                )
                + self.clocks()
                + self.workers.logs_tail(15)
            )

        return seconds_until(
            done, timeout, "windows", every=0.05, check=self.workers.check_alive, detail=detail
        )

    def wait_processed(self, timeout: float) -> float:
        return seconds_until(
            lambda: (self.workers.check_alive(), self.progress() >= 1.0)[1],
            timeout,
            "input processed (offsets committed)",
            every=0.3,
            detail=lambda: self.clocks() + self.workers.logs_tail(15),
        )

    def late_summary(self, kind: str) -> str:
        """For failure messages: late records by source partition and the watermarks
        they missed."""
        late = self.late[kind].records
        if not late:
            return ""
        by = Counter(r["key"].split("-")[0] for r in late)
        marks = Counter(r["value"]["reason"].rsplit(" ", 1)[-1] for r in late)
        stamps = sorted(r["value"]["timestamp"] for r in late)
        return f"(by source partition {dict(by)}, missed {marks}, ts {stamps[0]}..{stamps[-1]})"

    def clocks(self) -> str:
        """For failure messages: each live worker's watermarks and what holds them."""
        out = []
        for worker_id, worker in self.workers.live.items():
            st = worker.status() or {}
            out.append(f"\n{worker_id}: {st.get('watermarks')} upstream: {st.get('upstream')}")
        return "".join(out)

    def late_metric(self, kind: str) -> float:
        return sum(
            metric(w.metrics(), "weir_records_late_total", weir_job="by-tag", operator=kind)
            for w in self.workers.live.values()
        )

    def close(self) -> None:
        self.workers.close()
        for reader in (*self.output.values(), *self.late.values()):
            reader.close()


Step = tuple[float, str, str]  # (share of the source committed, "start"|"stop"|"kill", worker)


def run_tag_windows(
    data: Dataset,
    bootstrap: str,
    new_topic: Callable[..., str],
    tmp: Path,
    steps: list[Step],
    repartitions: int,
    env: dict[str, dict[str, str]] | None = None,
    timeout: float = 300,
) -> dict[str, Any]:
    """Phase A pre-produced as a backlog; the ``steps`` at the given shares of it
    processed (at 0: before any is); then closer 1, phase B, closer 2. No reading of
    phase A may be late, every window must equal DuckDB's, the late topics must hold
    exactly the surely-late readings."""
    started = time.monotonic()
    src = new_topic(partitions=data.partitions, prefix="readings")
    produce_readings(bootstrap, src, data.a)
    group = TagWindows(bootstrap, new_topic, src, tmp, repartitions)
    workers, env = group.workers, env or {}
    figures: dict[str, Any] = {"readings": len(data.a) + len(data.b_normal) + 2,
                               "late": len(data.b_late), "steps": []}  # fmt: skip
    try:
        for share, action, worker in steps:
            if share > 0:
                seconds_until(
                    lambda s=share: (workers.check_alive(), group.stage_progress() >= s)[1],
                    timeout, f"{share:.0%} of the backlog through both stages", every=0.2,
                    detail=lambda: workers.logs_tail(15),
                )  # fmt: skip
            figures["steps"].append((action, worker, round(group.stage_progress(), 2)))
            if action == "kill":  # kill -9, and at once a new incarnation on the same state
                workers.kill(worker)
                workers.start(worker, env=env.get(worker))
            elif action == "stop":
                workers.stop(worker)
            else:
                workers.start(worker, env=env.get(worker)).wait_running(60, partitions=False)
        figures["phase_a_processed_s"] = round(group.wait_processed(timeout), 1)
        for kind in KINDS:
            group.late[kind].drain()
            late = group.late[kind].records
            assert not late, (
                f"{kind}: {len(late)} readings of phase A (all within the out-of-orderness bound"
                f" of their partition) were late {group.late_summary(kind)}"
                f"{group.clocks()}{workers.logs_tail(15)}"
            )
        produce_readings(bootstrap, src, [data.closer1])
        want_a = {k: set(reference(k, data.a, tmp)) for k in KINDS}
        figures["phase_a_windows_s"] = round(group.wait_windows(want_a, 120), 1)

        produce_readings(bootstrap, src, data.phase_b())
        group.wait_processed(timeout)
        produce_readings(bootstrap, src, [data.closer2])
        final = {k: reference(k, data.counted(), tmp) for k in KINDS}
        last = {  # closer 2's own windows need a watermark beyond it: optional
            k: {(CLOSER, s, e) for s, e in windows_of(k, data.closer2.ts)}
            if k != "session" else {(CLOSER, data.closer2.ts, data.closer2.ts + GAP)}
            for k in KINDS
        }  # fmt: skip
        required = {k: set(final[k]) - last[k] for k in KINDS}
        figures["phase_b_windows_s"] = round(group.wait_windows(required, 120), 1)
        want_late = late_ids(data.b_late)
        for kind in KINDS:
            wait_for(
                lambda k=kind: (
                    (group.late[k].poll(0.1), len(group.late[k].records))[1] >= len(data.b_late)
                ),
                60,
                f"{kind}: {len(data.b_late)} late records on the late topic",
            )
        metrics = {k: group.late_metric(k) for k in KINDS}
        restarted = any(n > 1 for n in workers.incarnations.values())
        for kind in KINDS:
            group.output[kind].drain()
            group.late[kind].drain()
            problems = compare(kind, group.output[kind].values(), final[kind], last[kind])
            print(f"{kind}: {problems}")
            assert_matches(problems)
            got_late = Counter(
                (r["key"], r["value"]["timestamp"], r["value"]["record"]["value"])
                for r in group.late[kind].records
            )
            assert got_late == want_late, (
                f"{kind}: late topic differs: {sum((got_late - want_late).values())}"
                f" unexpected (e.g. {list(got_late - want_late)[:3]}),"
                f" {sum((want_late - got_late).values())} missing"
            )
            if not restarted:  # a killed incarnation's counter is gone
                assert metrics[kind] == len(data.b_late), (kind, metrics[kind])
            figures[kind] = {"windows": problems["emitted"], "late_metric": metrics[kind]}
        workers.stop_all()
    finally:
        group.close()
    figures["total_s"] = round(time.monotonic() - started, 1)
    print(f"figures: {figures}")
    return figures


def skewed(seed: int, target: int, late: int) -> Dataset:
    """Five partitions: partition 0 holds ten times what each of 1-3 holds, 4 is empty;
    2 and 3 end early (they go idle while the others still have a backlog)."""
    return generate(
        seed=seed, target=target, partitions=5, tags_per_partition=6,
        ends=(1.0, 1.0, 0.6, 0.3, 1.0), weights=(10, 1, 1, 1, 0), late=late, fresh=500,
    )  # fmt: skip


@pytest.mark.timeout(600)
def test_repartitioned_windows_of_a_skewed_backlog_survive_a_failed_commit(
    kafka_bootstrap, new_topic, tmp_path
):
    """Two workers with two slots each catch up on a backlog in five partitions (one ten
    times the others, one empty) through three repartition topics of three partitions;
    one worker's third checkpoint commit fails (a test hook) during the catch-up and is
    rolled back. No reading of the backlog is late, every tumbling, sliding and session
    window equals DuckDB's, the late topics hold exactly the surely-late readings."""
    data = skewed(seed=11, target=20_000, late=150)
    figures = run_tag_windows(
        data, kafka_bootstrap, new_topic, tmp_path,
        steps=[(0, "start", "w1"), (0, "start", "w2")], repartitions=3,
        env={"w1": {"WEIR_FAULT_INJECT": "fail-commit:3"}},
    )  # fmt: skip
    assert all(figures[k]["late_metric"] == 150 for k in KINDS)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_repartitioned_windows_of_a_large_backlog_survive_kill_and_join(
    kafka_bootstrap, new_topic, tmp_path
):
    """~110k readings in five partitions (one ten times the others, one empty), two
    workers with two slots each; a quarter in, one is killed (kill -9) and restarted;
    halfway, a third joins. Every window equals DuckDB's, exactly the surely-late
    readings are late."""
    data = skewed(seed=12, target=110_000, late=1000)
    run_tag_windows(
        data, kafka_bootstrap, new_topic, tmp_path,
        steps=[(0, "start", "w1"), (0, "start", "w2"), (0.25, "kill", "w1"),
               (0.5, "start", "w3")],
        repartitions=4, timeout=900,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_repartitioned_windows_survive_scaling_from_one_worker_to_three_and_back(
    kafka_bootstrap, new_topic, tmp_path
):
    """One worker, then three, then one again while a backlog is caught up, with a
    repartition topic of seven partitions behind a source of five: the watermarks and
    their tables move with the partitions on both sides of the repartition topics."""
    data = skewed(seed=13, target=60_000, late=300)
    run_tag_windows(
        data, kafka_bootstrap, new_topic, tmp_path,
        steps=[(0, "start", "w1"), (0.15, "start", "w2"), (0.15, "start", "w3"),
               (0.5, "stop", "w2"), (0.5, "stop", "w3")],
        repartitions=7, timeout=900,
    )  # fmt: skip


# -- 5. idle partitions ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_idle_partition_does_not_stall_windows(kafka_bootstrap, new_topic, tmp_path):
    """Two partitions fed live; then partition 1 stops while partition 0 jumps 25 s ahead
    in event time and keeps going. Partition 1's last windows (and partition 0's windows
    in between) must wait while partition 1 is active, and be emitted once it has been
    idle for idle_timeout (1 s): within idle_timeout + 5 s of its last record (checkpoint
    commits and a loaded CI machine take some of that), not before idle_timeout."""
    idle = 1.0
    src = new_topic(partitions=2, prefix="readings")
    pipe = Pipeline("tumbling", kafka_bootstrap, new_topic, src, tmp_path / "logs",
                    tmp_path / "state", idle=idle)  # fmt: skip
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
    sent: list[Reading] = []

    def send_now(readings: list[Reading]) -> None:
        for r in readings:
            send(producer, src, **message(r, **AS_MESSAGE))
        assert producer.flush(10) == 0
        sent.extend(readings)

    try:
        pipe.start().wait_running(60)
        ts = T0
        for _ in range(40):  # 2 s: both partitions, event time 10x the wall clock
            send_now([Reading(f"a{ts % 3}", 1.0, ts, 0), Reading(f"b{ts % 3}", 2.0, ts, 1)])
            ts += 500
            pipe.output.poll(0.05)
        stopped_at, last_b = time.time(), ts - 500  # wall clock, as records' "arrived"
        ts += 25_000
        for _ in range(80):  # 4 s: partition 0 only
            send_now([Reading(f"a{ts % 3}", 1.0, ts, 0)])
            ts += 500
            pipe.output.poll(0.05)
        pipe.output.poll(1.0)
        # windows partition 1 held back: ending after its max - ooo, before p0's jump
        held = {(r.tag, *windows_of("tumbling", r.ts)[0]) for r in sent
                if windows_of("tumbling", r.ts)[0][1] - 1 > last_b - OOO
                and r.ts <= last_b + 25_000 - OOO - SIZE}  # fmt: skip
        arrived = {}
        for rec in pipe.output.records:
            v = rec["value"]
            arrived.setdefault((v["key"], v["window_start"], v["window_end"]), rec["arrived"])
        assert held and held <= set(arrived), f"never emitted: {sorted(held - set(arrived))}"
        delays = sorted(arrived[w] - stopped_at for w in held)
        print(f"held-back windows: {len(held)}, emitted {delays[0]:.2f}..{delays[-1]:.2f}s"
              f" after partition 1 stopped (idle_timeout {idle}s)")  # fmt: skip
        assert delays[0] >= idle - 0.1, f"emitted before partition 1 was idle: {delays}"
        assert delays[-1] <= idle + 5.0, f"stalled past idle_timeout + 5 s: {delays}"
        # and the results are right
        want = reference("tumbling", sent, tmp_path)
        got = {w: agg_of(v) for v in pipe.output.values()
               if (w := (v["key"], v["window_start"], v["window_end"]))}  # fmt: skip
        assert all(same(got[w], want[w]) for w in got), "wrong results"
        pipe.stop()
    finally:
        producer.flush(5)
        pipe.close()


@pytest.mark.timeout(120)
def test_restart_keeps_firing_when_a_partition_has_nothing_new(
    kafka_bootstrap, new_topic, tmp_path
):
    """A clean restart after which one partition gets no new records: that partition
    has nothing to read, so it must count as idle after idle_timeout and not hold the
    watermark back; the windows over the other partition's new records close."""
    rng = random.Random(7)
    src = new_topic(partitions=2, prefix="readings")
    pipe = Pipeline("tumbling", kafka_bootstrap, new_topic, src, tmp_path / "logs",
                    tmp_path / "state")  # fmt: skip
    before = [
        *partition_readings(rng, 0, ["a0", "a1"], T0, T0 + 30_000),
        *partition_readings(rng, 1, ["b0", "b1"], T0, T0 + 30_000),
    ]
    after = partition_readings(rng, 0, ["a0", "a1"], T0 + 40_000, T0 + 80_000)
    try:
        produce_readings(kafka_bootstrap, src, before)
        pipe.start().wait_running(60)
        wait_processed([pipe], 60)
        pipe.stop()  # SIGTERM: last checkpoint, clean exit
        produce_readings(kafka_bootstrap, src, after)
        pipe.start().wait_running(60)
        final = reference("tumbling", [*before, *after], tmp_path)
        closable = max(r.ts for r in after) - OOO
        due = {w for w in final if w[2] - 1 <= closable}
        took = wait_windows([pipe], {"tumbling": due}, 30)
        print(f"windows over the new records closed {took:.1f}s after the restart")
        pipe.output.drain()
        problems = compare("tumbling", pipe.output.values(), final, set(final) - due)
        assert_matches(problems)
        pipe.stop()
    finally:
        pipe.close()


@pytest.mark.timeout(180)
def test_partition_restoring_its_state_holds_the_watermark(kafka_bootstrap, new_topic, tmp_path):
    """After a restart on a new machine (empty state dir), partition 0 restores a big
    changelog (50k open windows) while partition 1 (little state) is ready at once; both
    have a backlog within the out-of-orderness bound. Partition 0 must hold the
    watermark back until its state is restored and its backlog read: none of its
    records may be late. (Whether partition 1 runs ahead first is a race: three rounds.)"""
    for round_ in range(3):
        restore_round(kafka_bootstrap, new_topic, tmp_path / f"round{round_}", round_)


def restore_round(bootstrap: str, new_topic: Callable[..., str], tmp: Path, seed: int) -> None:
    base = (T0 // SIZE + 1) * SIZE  # all of phase 1 inside one window: it stays open
    src = new_topic(partitions=2, prefix="readings")
    pipe = Pipeline("tumbling", bootstrap, new_topic, src, tmp / "logs", tmp / "state")
    pad = "x" * 80  # bigger state records: a slower restore
    many = [Reading(f"k{i:06d}{pad}", 1.0, base + i % 5000, 0) for i in range(50_000)]
    few = [Reading(f"b{i % 3}", 1.0, base + i * 100, 1) for i in range(50)]
    rng = random.Random(seed)
    backlog = [
        *partition_readings(rng, 0, ["a0", "a1"], base + 10_000, base + 60_000),
        *partition_readings(rng, 1, ["b0", "b1"], base + 10_000, base + 60_000),
    ]
    try:
        produce_readings(bootstrap, src, [*many, *few])
        pipe.start().wait_running(60)
        wait_processed([pipe], 120)
        pipe.stop()
        shutil.rmtree(pipe.state)  # a new machine: the state comes back from the changelog
        produce_readings(bootstrap, src, backlog)
        pipe.start().wait_running(60)
        wait_processed([pipe], 120)
        pipe.late_reader.drain()
        late = pipe.late_reader.records
        assert not late, (
            f"round {seed}: {len(late)} records late after the restore, e.g."
            f" {[(r['key'], r['value']['reason']) for r in late[:3]]}{pipe.logs_tail()}"
        )
        final = reference("tumbling", [*many, *few, *backlog], tmp)
        due = {w for w in final if w[2] - 1 <= base + 60_000 - 3 * OOO}
        wait_windows([pipe], {"tumbling": due}, 60)
        pipe.stop()
    finally:
        pipe.close()
