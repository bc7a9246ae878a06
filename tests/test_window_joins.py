"""Window and interval joins on a real broker, compared with DuckDB's joins.

A backlog of records on two topics of 3 partitions (``{"id", "k", "t"}``, bursty per
key so that sessions form and end; a worker reads one partition seconds of event time
ahead of another) is joined by tests/jobs/two_joins.py — tumbling and session
windows, inner, left and full outer, and an interval join — by two workers, one of
them killed (-9) and restarted mid-run. Every row, read_committed, is one of
DuckDB's over the same records, each exactly once. (Both runs take minutes: slow.
The joins' rules are checked by property tests in tests/test_multi_input.py.)
"""

from __future__ import annotations

import random
import uuid
from collections import Counter

import duckdb
import orjson
import pytest
from confluent_kafka import Producer

from tests.reading import TopicReader
from tests.waiting import wait_for
from tests.workers import Workers, job_env, metric
from weir.service.partitioner import partition_for

T0 = 1_700_000_000_000
PARTITIONS = 2  # of each join's topic
INPUT_PARTITIONS = 3
SIZE, GAP, LOWER, UPPER = 1_000, 300, -200, 300  # as tests/jobs/two_joins.py
SESSION = [
    "--kafka", "consumer.session.timeout.ms=6000",
    "--kafka", "consumer.heartbeat.interval.ms=1000",
]  # fmt: skip


def records(seed: int, count: int) -> tuple[list[dict], list[dict]]:
    """Records of A and B in event-time order: each key is busy for a while, then
    quiet (sessions), and A and B interleave unevenly."""
    rng = random.Random(seed)
    a: list[dict] = []
    b: list[dict] = []
    t = T0
    for n in range(count):
        t += rng.randrange(0, 15)
        busy = (t - T0) // 2_000
        key = f"k{(busy * 7 + rng.randrange(4)) % 30}"
        (a if rng.random() < 0.5 else b).append({"id": n, "k": key, "t": t})
    return a, b


def closers(end: int) -> list[tuple[int, dict]]:
    """(input partition, record): a record far past ``end`` from every input partition
    to every partition of the join topics, on each side: every origin's watermark then
    passes every real window. (Their windows never fire; the interval join joins them
    at once: left out of the comparison.)"""
    keys: dict[int, str] = {}
    i = 0
    while len(keys) < PARTITIONS:
        key = f"zz-closer-{i}"
        keys.setdefault(partition_for(key.encode(), PARTITIONS), key)
        i += 1
    return [
        (u, {"id": -1 - p, "k": k, "t": end + 60_000})
        for u in range(INPUT_PARTITIONS)
        for p, k in keys.items()
    ]


def produce(bootstrap: str, topic: str, rows: list[dict], last: list[tuple[int, dict]]) -> None:
    """``rows`` keyed by ``k`` (placed by the key), then ``last`` on the given partitions."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for r in rows:
        producer.produce(topic, orjson.dumps(r), r["k"].encode())
        producer.poll(0)
    for u, r in last:
        producer.produce(topic, orjson.dumps(r), r["k"].encode(), partition=u)
    assert producer.flush(60) == 0


WINDOWED = {
    "tumbling": "SELECT id, k, t - t % {size} AS ws, t - t % {size} + {size} AS we, side FROM u",
    # A new session where the gap to the key's previous record reaches GAP.
    "session": """
        SELECT id, k, side,
               MIN(t) OVER (PARTITION BY k, sid) AS ws,
               MAX(t) OVER (PARTITION BY k, sid) + {gap} AS we
        FROM (SELECT *, SUM(CASE WHEN t - prev < {gap} THEN 0 ELSE 1 END)
                        OVER (PARTITION BY k ORDER BY t, id) AS sid
              FROM (SELECT *, LAG(t) OVER (PARTITION BY k ORDER BY t, id) AS prev FROM u))
    """,
}
JOINS = {"inner": "JOIN", "left": "LEFT JOIN", "full": "FULL OUTER JOIN"}


def duckdb_rows(a: list[dict], b: list[dict], names: list[str]) -> dict[str, Counter]:
    """Per join: (key, window_start, window_end, left id, right id) rows — (key, left
    id, right id) for the interval join — by DuckDB."""
    con = duckdb.connect()
    out: dict[str, Counter] = {}
    try:
        con.execute("CREATE TABLE u (side INT, id BIGINT, k VARCHAR, t BIGINT)")
        con.executemany(
            "INSERT INTO u VALUES (?, ?, ?, ?)",
            [(0, r["id"], r["k"], r["t"]) for r in a] + [(1, r["id"], r["k"], r["t"]) for r in b],
        )
        for name in names:
            if name == "interval":
                rows = con.execute(
                    "SELECT l.k, l.id, r.id FROM u l JOIN u r ON l.k = r.k AND l.side = 0"
                    f" AND r.side = 1 AND r.t BETWEEN l.t + {LOWER} AND l.t + {UPPER}"
                ).fetchall()
                out[name] = Counter(rows)
                continue
            kind, how = name.split("-")
            windows = WINDOWED[kind].format(size=SIZE, gap=GAP)
            rows = con.execute(
                f"WITH w AS ({windows}),"
                " l AS (SELECT * FROM w WHERE side = 0), r AS (SELECT * FROM w WHERE side = 1)"
                " SELECT COALESCE(l.k, r.k), COALESCE(l.ws, r.ws), COALESCE(l.we, r.we),"
                f" l.id, r.id FROM l {JOINS[how]} r ON l.k = r.k AND l.ws = r.ws"
            ).fetchall()
            out[name] = Counter(rows)
    finally:
        con.close()
    return out


def row_of(name: str, v: dict) -> tuple:
    ids = (v["left"] and v["left"]["id"], v["right"] and v["right"]["id"])
    if name == "interval":
        return (v["key"], *ids)
    return (v["key"], v["window_start"], v["window_end"], *ids)


def run_joins(bootstrap: str, new_topic, tmp_path, names: list[str], seed: int) -> None:
    a, b = records(seed, 8_000)
    end = max(r["t"] for r in a + b)
    topic_a, topic_b = (new_topic(partitions=INPUT_PARTITIONS) for _ in "ab")
    outs = {name: new_topic(partitions=2) for name in names}
    produce(bootstrap, topic_a, a, closers(end))
    produce(bootstrap, topic_b, b, closers(end))
    want = duckdb_rows(a, b, names)
    group = f"wj-{uuid.uuid4().hex[:10]}"
    joins = ",".join(f"{name}={topic}" for name, topic in outs.items())
    # The backlog is in the joins' topics long before the kill: only the joins move, and a
    # partition that moved waits for its sides' idle timeout where nothing more comes.
    env = job_env(in_a=topic_a, in_b=topic_b, joins=joins, partitions=PARTITIONS, idle=15)
    args = ["--state-dir", str(tmp_path / "state"), "--checkpoint-interval-ms", "200",
            "--slots", "2", *SESSION]  # fmt: skip
    workers = Workers("two_joins.py", bootstrap, group, env, args, tmp_path / "logs")

    readers = {name: TopicReader(bootstrap, topic, True, True) for name, topic in outs.items()}

    def emitted(name: str) -> int:
        """Rows of ``name`` so far (read on from where the last call stopped)."""
        while readers[name].read(0.2):
            pass
        return len(readers[name].records)

    quarter = want[names[0]].total() // 4
    try:
        for worker_id in ("w1", "w2"):
            workers.start(worker_id)
        wait_for(lambda: emitted(names[0]) >= quarter, 180, "a quarter of the rows",
                 every=0.5, check=workers.check_alive, detail=workers.logs_tail)  # fmt: skip
        workers.kill("w2")
        workers.start("w2").wait_running(60, partitions=False)

        def progress() -> str:
            """Rows so far, and what each worker says of its time and its partitions."""
            rows = {name: f"{len(r.records)}/{want[name].total()}" for name, r in readers.items()}
            said = {}
            for worker_id, worker in workers.live.items():
                st = worker.status() or {}
                said[worker_id] = {
                    "late": metric(worker.metrics(), "weir_records_late_total"),
                    **{k: st.get(k) for k in ("watermark", "paused", "restoring", "lag")},
                }
            return f": rows {rows}, workers {said}{workers.logs_tail()}"

        for name in names:
            wait_for(lambda name=name: emitted(name) >= want[name].total(), 240,
                     f"every {name} row", every=2, check=workers.check_alive,
                     detail=progress)  # fmt: skip
        workers.stop_all()
        for reader in readers.values():
            reader.drain(60)  # read on to the end: what was committed before the stop
        rows_of = {name: reader.records for name, reader in readers.items()}
    finally:
        workers.close()
        for reader in readers.values():
            reader.close()
    for name in names:
        rows = rows_of[name]
        got = Counter(
            row_of(name, r["value"]) for r in rows if not r["value"]["key"].startswith("zz-")
        )
        missing, extra = want[name] - got, got - want[name]
        assert not missing and not extra, (
            f"{name}: {got.total()} rows, {missing.total()} missing (e.g. {list(missing)[:3]}),"
            f" {extra.total()} unexpected (e.g. {list(extra)[:3]})"
        )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tumbling_window_joins_match_duckdb_through_a_kill(kafka_bootstrap, new_topic, tmp_path):
    run_joins(kafka_bootstrap, new_topic, tmp_path,
              ["tumbling-inner", "tumbling-left", "tumbling-full"], seed=3)  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_session_and_interval_joins_match_duckdb_through_a_kill(
    kafka_bootstrap, new_topic, tmp_path
):
    run_joins(kafka_bootstrap, new_topic, tmp_path,
              ["session-inner", "session-full", "interval"], seed=4)  # fmt: skip
