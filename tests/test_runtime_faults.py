"""The worker runtime under load and faults, on a real broker (issue "Worker runtime").

* group membership: workers join, leave cleanly (SIGTERM) and die (kill -9) while input
  keeps arriving; at-least-once loses nothing and duplicates only what the dead worker
  had not committed;
* backpressure: a slow slot holds the fetch (or pauses its partitions) instead of
  buffering its input, keeps memory bounded, keeps its output flowing and stays in the
  group; exactly-once checkpoints keep completing behind a slow slot;
* I/O-bound scaling: slots overlap functions that wait (``time.sleep`` releases the GIL);
* the partition x slot matrix: exactly once, every slot works, per-key order, one slot
  per key.

Every wait is bounded. Measured figures are printed (run with ``-s`` to see them) and
repeated in assertion messages.
"""

from __future__ import annotations

import threading
import time
import uuid
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.feeding import Feeder, n_key, numbered
from tests.kafka_fixture import (
    committed_offsets,
    committed_reached,
    consume_all,
    end_offsets,
    produce_json,
)
from tests.waiting import wait_for
from tests.workers import WorkerProcess, WorkerThread, job_env, metric, partition_numbers

BATCH_SIZE = 2000  # WorkerConfig.batch_size default: records per consume()
SLOT_QUEUE_RECORDS = 20000  # WorkerConfig.slot_queue_records default: backpressure bound


# -- helpers ------------------------------------------------------------------------


class StatusMonitor(threading.Thread):
    """Polls /status of every live worker; remembers the partitions each one showed."""

    def __init__(self, workers: dict[str, WorkerProcess]) -> None:
        super().__init__(name="status-monitor", daemon=True)
        self.workers = workers
        self.seen: dict[str, set[int]] = defaultdict(set)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for name, worker in list(self.workers.items()):
                if worker.proc.poll() is None:
                    st = worker.status(timeout=1.0)
                    if st is not None:
                        self.seen[name].update(partitions_of(st))
            self._halt.wait(0.25)

    def halt(self) -> None:
        self._halt.set()
        self.join(10)


def partitions_of(status: dict[str, Any] | None) -> set[int]:
    """Partition numbers in a /status ``partitions`` list (none without a status)."""
    return set() if status is None else partition_numbers(status["partitions"])


def split_between(workers: list[WorkerProcess], partitions: int) -> dict[int, int] | None:
    """If ``workers`` (all running) own every partition exactly once: partition -> index."""
    owner: dict[int, int] = {}
    for i, worker in enumerate(workers):
        st = worker.status()
        if st is None or st["state"] != "running":
            return None
        for p in partitions_of(st):
            if p in owner:
                return None
            owner[p] = i
    return owner if len(owner) == partitions else None


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


# -- 1. group membership and rebalances ------------------------------------------------

RATE = 2000  # input records/s during the whole test
INTERVAL_MS = 300


@pytest.mark.slow  # ~35 s; the default suite's rebalance tests run exactly-once
def test_rebalances_at_least_once_lose_nothing(kafka_bootstrap, new_topic, tmp_path: Path):
    """2 workers, a 3rd joins, one leaves on SIGTERM, one is killed: nothing lost.

    Duplicates may only come from the killed worker: records of the partitions it owned
    at the kill, at offsets from the group's committed offset (read right after the kill)
    up to the end of the partition at the kill. A clean leave (SIGTERM) and a join
    commit before partitions move, so they must not duplicate anything.
    """
    partitions = 8
    src, out = new_topic(partitions=partitions), new_topic(partitions=partitions)
    group = f"g-{uuid.uuid4().hex}"
    args = ["--guarantee", "at-least-once", "--checkpoint-interval-ms", str(INTERVAL_MS)]
    env = job_env(in_=src, out=out)
    workers: dict[str, WorkerProcess] = {}

    def start(name: str) -> WorkerProcess:
        workers[name] = WorkerProcess(
            "tagged.py", kafka_bootstrap, group, name, tmp_path, env=env, args=args
        )
        return workers[name]

    feeder = Feeder(kafka_bootstrap, src, numbered(), RATE, key=n_key)
    monitor = StatusMonitor(workers)
    feeder.start()
    monitor.start()
    try:
        a, b = start("a"), start("b")
        a.wait_running()
        b.wait_running()
        wait_for(lambda: split_between([a, b], partitions), 30, "a and b to share 8 partitions")
        time.sleep(2)

        c = start("c")
        c.wait_running()
        wait_for(lambda: split_between([a, b, c], partitions), 30, "a, b and c to share them")
        time.sleep(2)

        assert a.terminate(timeout=45) == 0, f"SIGTERM must stop cleanly: {a.log_tail()}"
        wait_for(lambda: split_between([b, c], partitions), 30, "b and c to take a's share")
        time.sleep(2)

        owned_by_b = wait_for(lambda: partitions_of(b.status()), 10, "b's partitions")
        b.kill()
        time.sleep(0.5)  # a commit b sent just before dying has landed by now
        committed_at_kill = committed_offsets(kafka_bootstrap, group, src)
        end_at_kill = end_offsets(kafka_bootstrap, src)

        wait_for(lambda: split_between([c], partitions), 45, "c to own all 8 partitions")
        time.sleep(2)
        total = feeder.stop()
        wait_for(
            lambda: committed_reached(kafka_bootstrap, group, src),
            60,
            "c to process and commit the whole input",
            every=0.5,
        )
        got = consume_all(kafka_bootstrap, out, expected=None, timeout=60)
        assert c.terminate(timeout=45) == 0, c.log_tail()
    finally:
        feeder.halt()
        monitor.halt()
        for worker in workers.values():
            worker.close()

    counts = Counter(r["value"]["n"] for r in got)
    missing = set(range(total)) - set(counts)
    assert not missing, f"{len(missing)} of {total} inputs lost, e.g. {sorted(missing)[:10]}"
    assert set(counts) == set(range(total)), "no output that was never input"

    duplicates = sorted(n for n, k in counts.items() if k > 1)
    window = {p: (committed_at_kill[p], end_at_kill[p]) for p in owned_by_b}

    def uncommitted_at_kill(n: int) -> bool:
        partition, offset = feeder.where[n]
        lo, hi = window.get(partition, (0, 0))
        return lo <= offset < hi

    unexplained = [(n, feeder.where[n]) for n in duplicates if not uncommitted_at_kill(n)]
    uncommitted = sum(hi - lo for lo, hi in window.values())
    # The stated bound: what arrives in two checkpoint intervals plus one fetch batch.
    bound = 2 * RATE * INTERVAL_MS // 1000 + BATCH_SIZE
    summary = (
        f"{total} inputs, {len(got)} outputs, {len(duplicates)} duplicated"
        f" ({len(duplicates) - len(unexplained)} in the kill window, {len(unexplained)}"
        f" outside); b owned {sorted(owned_by_b)} with {uncommitted} records uncommitted"
        f" at the kill; bound {bound}"
    )
    print(f"\nrebalances: {summary}")
    for name in ("a", "b", "c"):
        assert monitor.seen[name], f"worker {name}'s /status never showed partitions"

    assert not unexplained, (
        f"duplicates outside the killed worker's uncommitted window: {unexplained[:10]} ({summary})"
    )
    assert max(counts.values()) <= 2, f"an input more than twice: {counts.most_common(3)}"
    assert len(duplicates) <= bound, summary


# -- 2. backpressure -------------------------------------------------------------------


def slow_worker(
    bootstrap: str, name: str, logs: Path, env: dict[str, str], args: list[str] | None = None
) -> WorkerProcess:
    """tests/jobs/tagged.py (slowed down by ``env``'s sleep_ms) in a group of its own."""
    return WorkerProcess("tagged.py", bootstrap, f"g-{uuid.uuid4().hex}", name, logs, env, args)


def test_backpressure_bounds_memory_and_keeps_membership(kafka_bootstrap, new_topic, tmp_path):
    """A slot that takes 50 ms per record, 60k records (60 MB) waiting, more arriving.

    The worker must pause the partition instead of fetching its input: what it has
    fetched but not processed stays within the slot queue bound (slot_queue_records,
    default 20000, plus one fetch batch), RSS stays under 300 MB and flat, and the
    worker keeps its group membership (no rebalance after the first assignment).
    Two slots, so that the records are handed to a slot thread and queue there (with
    one slot this stateless job's chain runs on the fetch thread, which simply does
    not fetch while it works: nothing queues).
    """
    prefill, pad = 60_000, 1000
    src, out = new_topic(partitions=1), new_topic(partitions=1)
    produce_json(
        kafka_bootstrap, src, [{"n": i, "pad": "x" * pad} for i in range(prefill)], key=None
    )
    feeder = Feeder(kafka_bootstrap, src, numbered(prefill, pad), rate=300, key=n_key)
    worker = slow_worker(
        kafka_bootstrap, "slow", tmp_path, job_env(in_=src, out=out, sleep_ms=50), ["--slots", "2"]
    )
    samples: list[dict[str, Any]] = []
    try:
        feeder.start()
        worker.wait_running()
        rss_start = rss_mb(worker.proc.pid)
        rebalances_start = metric(worker.metrics(), "weir_rebalances_total")
        started = time.monotonic()
        while time.monotonic() - started < 18:
            assert worker.proc.poll() is None, f"worker died: {worker.log_tail()}"
            st = worker.status()
            assert st is not None, "worker's HTTP endpoint stopped answering"
            samples.append(
                {
                    "t": time.monotonic() - started,
                    "rss": rss_mb(worker.proc.pid),
                    "paused": bool(st["paused"]) or st["fetch_held"],
                    "queued": max(slot["queued"] for slot in st["slots"]),
                    "fetched": sum(st["positions"].values()),
                    "processed": sum(slot["records"] for slot in st["slots"]),
                    "state": st["state"],
                    "partitions": st["partitions"],
                }
            )
            time.sleep(0.5)
        rebalances_end = metric(worker.metrics(), "weir_rebalances_total")
        input_end = end_offsets(kafka_bootstrap, src)[0]
    finally:
        feeder.halt()
        worker.close()  # SIGKILL: a clean stop would first process the whole queue

    peak = max(s["rss"] for s in samples)
    late = [s["rss"] for s in samples if s["t"] >= 8]
    in_flight = max(s["fetched"] - s["processed"] for s in samples)
    figures = (
        f"RSS start {rss_start:.0f} MB, peak {peak:.0f} MB, last 10 s"
        f" {min(late):.0f}-{max(late):.0f} MB; fetched-but-unprocessed peak {in_flight};"
        f" fetched {samples[-1]['fetched']} of {input_end}; rebalances"
        f" {rebalances_start:.0f}->{rebalances_end:.0f}"
    )
    print(f"\nbackpressure: {figures}")
    assert any(s["paused"] for s in samples), (
        f"/status never showed backpressure (paused partitions or a held fetch): {figures}"
    )
    # The fetcher pauses once a slot's queue passes the bound, so the queue can hold one
    # batch more than the bound, and the slot has one more batch in hand.
    assert in_flight <= SLOT_QUEUE_RECORDS + 2 * BATCH_SIZE, figures
    assert max(s["queued"] for s in samples) <= SLOT_QUEUE_RECORDS + BATCH_SIZE, figures
    assert samples[-1]["fetched"] < input_end - 30_000, f"fetched far ahead: {figures}"
    assert peak < 300, figures
    assert max(late) - min(late) < 30, f"RSS keeps growing: {figures}"
    assert rebalances_end == rebalances_start >= 1, f"left or rejoined the group: {figures}"
    assert all(s["state"] == "running" and s["partitions"] for s in samples), figures


def test_slow_slot_output_rate(kafka_bootstrap, new_topic, tmp_path):
    """1 slot at 50 ms/record: the output flows at ~20 records/s (10-30/s over 10 s)."""
    src, out = new_topic(partitions=1), new_topic(partitions=1)
    produce_json(kafka_bootstrap, src, [{"n": i} for i in range(3000)])
    env = job_env(in_=src, out=out, sleep_ms=50)
    worker = slow_worker(kafka_bootstrap, "slow", tmp_path, env, ["--guarantee", "at-least-once"])
    try:
        worker.wait_running()
        time.sleep(3)  # past the first records
        first = end_offsets(kafka_bootstrap, out)[0]
        t0 = time.monotonic()
        time.sleep(10)
        last = end_offsets(kafka_bootstrap, out)[0]
        rate = (last - first) / (time.monotonic() - t0)
        assert worker.proc.poll() is None, worker.log_tail()
    finally:
        worker.close()
    print(f"\nslow slot output rate: {rate:.1f} records/s")
    assert 10 <= rate <= 30, f"output rate {rate:.1f} records/s with one 50 ms/record slot"


def test_backpressure_exactly_once_keeps_committing(kafka_bootstrap, new_topic, tmp_path):
    """Exactly-once with a 2 ms/record slot and a deep backlog still commits checkpoints,
    for 2.5 times the transaction timeout of 10 s (the default for
    --checkpoint-interval-ms 1000): the barrier never waits behind more queued work than
    a checkpoint allows. Two slots, so that records queue for a slot thread (one slot's
    stateless chain runs on the fetch thread: no queue)."""
    src, out = new_topic(partitions=1), new_topic(partitions=1)
    produce_json(kafka_bootstrap, src, [{"n": i} for i in range(40_000)])
    worker = slow_worker(
        kafka_bootstrap, "eos", tmp_path, job_env(in_=src, out=out, sleep_ms=2), ["--slots", "2"]
    )
    try:
        worker.wait_running()
        started = time.monotonic()

        def committed_some() -> bool:
            assert worker.proc.poll() is None, f"worker died: {worker.log_tail(8)}"
            st = worker.status()
            return bool(st and any(c["status"] == "completed" for c in st["checkpoints"]))

        wait_for(committed_some, 25, "a completed checkpoint")
        # ... and it keeps going: alive, more checkpoints, committed output readable.
        deadline = started + 25
        while time.monotonic() < deadline:
            assert worker.proc.poll() is None, f"worker died: {worker.log_tail(8)}"
            time.sleep(0.5)
        st = worker.status()
        failed = [c for c in st["checkpoints"] if c["status"] != "completed"]
        assert not failed, f"failed checkpoints: {failed[:3]}"
        got = consume_all(kafka_bootstrap, out, expected=None, timeout=30)
        assert got, "nothing committed to the output"
    finally:
        worker.close()


# -- 3. I/O-bound scaling ----------------------------------------------------------------


def _io_run_seconds(bootstrap: str, src: str, out: str, slots: int, total: int) -> float:
    """Seconds from the first fetch until every record went through the 5 ms map."""
    worker = WorkerThread(
        "tagged.py",
        job_env(in_=src, out=out, sleep_ms=5),
        bootstrap=bootstrap,
        worker_id="io",
        slots=slots,
        checkpoint_interval_ms=200,
    )
    try:
        w = worker.worker
        wait_for(lambda: w.router.positions, 30, "the first fetch", every=0.002)
        t0 = time.monotonic()
        wait_for(
            lambda: sum(s.stats.records for s in w.slots) >= total,
            60,
            f"{total} records through {slots} slot(s)",
            every=0.002,
        )
        elapsed = time.monotonic() - t0
        per_slot = [s.stats.records for s in w.slots]
        got = consume_all(bootstrap, out, expected=total, timeout=60)
    finally:
        worker.stop()
    assert sorted(r["value"]["n"] for r in got) == list(range(total))
    assert all(n > 0 for n in per_slot), f"idle slots: {per_slot}"
    return elapsed


def test_io_bound_map_scales_with_slots(kafka_bootstrap, new_topic):
    """8 slots overlap a map that waits 5 ms per record: >= 4x faster than 1 slot."""
    total, partitions = 2000, 8
    src = new_topic(partitions=partitions)
    # Record n goes to partition n % partitions: every partition holds the same count.
    produce_json(
        kafka_bootstrap, src, [{"n": i} for i in range(total)],
        partition=lambda r: r["n"] % partitions,
    )  # fmt: skip
    one = _io_run_seconds(kafka_bootstrap, src, new_topic(partitions=partitions), 1, total)
    eight = _io_run_seconds(kafka_bootstrap, src, new_topic(partitions=partitions), 8, total)
    ratio = one / eight
    figures = f"1 slot {one:.2f}s, 8 slots {eight:.2f}s: {ratio:.1f}x ({total} records, 5 ms each)"
    print(f"\nI/O-bound scaling: {figures}")
    assert one >= total * 0.005 * 0.9, f"1 slot faster than its sleeps allow? {figures}"
    assert ratio >= 4, figures


# -- 4. the partition x slot matrix ------------------------------------------------------

KEYS = [f"key-{i}" for i in range(50)]
MATRIX_RECORDS = 2000


@pytest.mark.parametrize("slots", [1, 4, 8])
@pytest.mark.parametrize("partitions", [1, 3, 8])
def test_partition_slot_matrix(kafka_bootstrap, new_topic, partitions, slots):
    """Exactly once, every slot works, per-key order, each key on one (the right) slot."""
    src, out = new_topic(partitions=partitions), new_topic(partitions=3)
    records = [
        {"n": i, "k": KEYS[i % len(KEYS)], "seq": i // len(KEYS)} for i in range(MATRIX_RECORDS)
    ]
    produce_json(kafka_bootstrap, src, records, key=lambda r: r["k"].encode())
    inputs = consume_all(kafka_bootstrap, src, expected=MATRIX_RECORDS, timeout=30)
    partition_of_key = {r["key"]: r["partition"] for r in inputs}
    # Precondition of "every slot works" with pinned partitions: none of them is empty.
    assert len(set(partition_of_key.values())) == partitions, "50 keys fill every partition"

    worker = WorkerThread(
        "tagged.py",
        job_env(in_=src, out=out),
        bootstrap=kafka_bootstrap,
        worker_id="m",
        slots=slots,
        checkpoint_interval_ms=200,
    )
    try:
        consume_all(kafka_bootstrap, out, expected=MATRIX_RECORDS, timeout=60)
        w = worker.worker
        mode, pins = w.router.mode, dict(w.router.pins)
        max_key_groups = w.job.max_key_groups
        per_slot = [s.stats.records for s in w.slots]
    finally:
        worker.stop()
    got = consume_all(kafka_bootstrap, out, expected=None, timeout=60)

    # exactly once
    ns = sorted(r["value"]["n"] for r in got)
    assert len(ns) == MATRIX_RECORDS and ns == list(range(MATRIX_RECORDS)), (
        f"{len(ns)} outputs for {MATRIX_RECORDS} inputs, {len(set(ns))} distinct"
    )

    # the slot each key should be on: its partition's slot, or its key group's slot
    if partitions >= slots:
        assert mode == "pinned", mode
        owned = Counter(pins.values())
        assert sorted(owned) == list(range(slots)), f"a slot owns no partition: {pins}"
        assert max(owned.values()) - min(owned.values()) <= 1, f"unbalanced pins: {pins}"
        expected_slot = {k: pins[(src, p)] for k, p in partition_of_key.items()}
    else:
        assert mode == "key-groups", mode
        expected_slot = {
            k: (zlib.crc32(k.encode()) % max_key_groups) * slots // max_key_groups for k in KEYS
        }
    expected_records = Counter()
    for r in records:
        expected_records[expected_slot[r["k"]]] += 1
    assert len(expected_records) == slots, "precondition: the 50 keys reach every slot"
    assert per_slot == [expected_records[s] for s in range(slots)], (
        f"records per slot {per_slot}, expected {[expected_records[s] for s in range(slots)]}"
    )

    slots_of_key: dict[str, set[str]] = defaultdict(set)
    out_partitions_of_key: dict[str, set[int]] = defaultdict(set)
    for r in got:
        assert r["key"] == r["value"]["k"], "the input key is kept"
        slots_of_key[r["key"]].add(r["value"]["slot"])
        out_partitions_of_key[r["key"]].add(r["partition"])
    for k in KEYS:
        assert slots_of_key[k] == {f"weir-slot-{expected_slot[k]}"}, (k, slots_of_key[k])
        assert len(out_partitions_of_key[k]) == 1, (k, out_partitions_of_key[k])

    # per-key order: within the key's output partition, seq strictly increases
    last_seq: dict[str, int] = {}
    for r in sorted(got, key=lambda r: (r["partition"], r["offset"])):
        k, seq = r["key"], r["value"]["seq"]
        assert seq > last_seq.get(k, -1), f"key {k}: seq {seq} after {last_seq[k]}"
        last_seq[k] = seq
