"""Elasticity on a real broker: repartition topics, scale out/in, standby replicas,
``--processes``, and source topics that gain partitions.

The main job (tests/jobs/el_users.py) keys ``{"n", "user", "amount"}`` records — whose
Kafka key is a random id — by ``user`` through the repartition topic
``<group>.by-user.repartition`` and keeps a running reduce per user emitting
``{"key": user, "count": c, "last": n, "total": t}``. Every output names the one input
it derives from, so exactly once means, per user: the committed outputs' counts are
1..N in order, each once; their ``last`` values are exactly the user's input ``n``\\ s,
each once; and each ``total`` is the sum of the amounts seen so far. (Order is kept per
record key, as Flink keeps it per key: when a worker momentarily holds fewer partitions
than slots, a source partition's records are spread over slots by their random keys, so
two records of one user from one source partition may reach the repartition topic in
either order. How often that happened is reported as ``reordered_users``.)

1. aggregates through the repartition topic match a reference with 1, 2 and 3 workers,
   and users really are spread over several source partitions (owned by different
   workers), so state kept per source partition would split every user's count;
   ``weir plan`` names the repartition topic;
2. 1 → 3 → 2 → 1 workers while input flows, with a kill -9: exact;
3. restarts with other ``--slots`` and ``--processes`` counts keep the state;
4. a kill -9 failover restores fewer records with ``--standby-replicas 1`` than without;
5. a source topic gaining partitions stops a job keyed by the record key with a clear
   error (1 or 2 workers, or ``--processes 2``), and a repartitioned job keeps running,
   correct.

New source partitions are noticed at the consumer's metadata refresh, every 5 minutes
by default (librdkafka's ``topic.metadata.refresh.interval.ms``); the tests set 1 s.

Every wait is bounded; figures are printed (``-s``) and repeated in assertion messages.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewPartitions

from tests.feeding import Feeder
from tests.kafka_fixture import consume_all, produce_json
from tests.reading import TopicReader, TopicWatcher
from tests.waiting import wait_for
from tests.workers import Workers, job_env, metric, metrics_at, split_tp, status_at

JOB = "el_users.py"
JOB_NAME = "el-users"  # Job(...) name in the job file: the metrics' job label
KEY_BY = "by-user"
OPERATOR = "counts"
RESTORED = "weir_restored_records_total"
INTERVAL_MS = 200
# A killed worker's partitions move after the session timeout; keep it short. New
# source partitions are noticed at the consumer's metadata refresh (5 min by default).
FAST = [
    "--checkpoint-interval-ms", str(INTERVAL_MS),
    "--kafka", "consumer.session.timeout.ms=6000",
    "--kafka", "consumer.heartbeat.interval.ms=1000",
    "--kafka", "consumer.topic.metadata.refresh.interval.ms=1000",
]  # fmt: skip


# -- inputs -----------------------------------------------------------------------------


def make_inputs(total: int, users: int, seed: int, first: int = 0) -> list[dict]:
    """Records ``n`` = first..first+total-1 for random users, with random amounts."""
    rng = random.Random(seed)
    return [
        {"n": n, "user": f"u{rng.randrange(users)}", "amount": rng.randrange(1, 100)}
        for n in range(first, first + total)
    ]


def random_id(_record: dict) -> bytes:
    """The Kafka key of an input: unrelated to its user, so users span partitions."""
    return uuid.uuid4().bytes


# -- what the workers own ---------------------------------------------------------------


def restored(port: int) -> float:
    """``weir_restored_records_total`` of the process serving ``port``."""
    return metric(metrics_at(port), RESTORED, weir_job=JOB_NAME, operator=OPERATOR)


def ownership(ports: list[int]) -> dict[int, set[tuple[str, int]]] | None:
    """Port -> the partitions that process owns (None if one does not answer/run)."""
    out = {}
    for port in ports:
        st = status_at(port)
        if st is None or st["state"] != "running":
            return None
        out[port] = {split_tp(x) for x in st["partitions"]} - {split_tp(x) for x in st["restoring"]}
    return out


Ownership = dict[int, set[tuple[str, int]]]


def wait_owned(
    workers: Workers, ports: list[int], what: str, accept: Callable[[Ownership], bool],
    timeout: float,
) -> Ownership:  # fmt: skip
    """Until who owns what (per process, from /status) is accepted; returns it."""

    def ready() -> Ownership | None:
        own = ownership(ports)
        return own if own is not None and accept(own) else None

    return wait_for(
        ready,
        timeout,
        what,
        every=0.3,
        check=workers.check_alive,
        detail=lambda: f": {ownership(ports)}{workers.logs_tail()}",
    )


def wait_balanced(
    workers: Workers, ports: list[int], expected: set[tuple[str, int]], timeout: float = 90
) -> Ownership:
    """Until the processes on ``ports`` together own every partition of ``expected``,
    once each, each owning some, nothing restoring; returns who owns what."""

    def settled(own: Ownership) -> bool:
        everything = [tp for parts in own.values() for tp in parts]
        return (
            all(own.values())
            and len(everything) == len(set(everything))
            and set(everything) == expected
        )

    what = f"{len(ports)} processes to share {len(expected)} partitions"
    return wait_owned(workers, ports, what, settled, timeout)


def wait_spread(
    workers: Workers, ports: list[int], topics: dict[str, int], timeout: float = 60
) -> Ownership:
    """Until every topic's partitions are spread evenly over the processes (counts per
    process differ by at most one), each partition owned once; returns who owns what.
    A worker joins the group with one consumer per stage (weir/service/consumers.py), so a
    repartitioned job's source and repartition partitions are balanced each on its own."""

    def even(own: Ownership) -> bool:
        for topic, n in topics.items():
            per = [sum(1 for t, _ in parts if t == topic) for parts in own.values()]
            if sum(per) != n or max(per) - min(per) > 1:
                return False
        return True

    what = f"{len(ports)} processes to share each of {topics} evenly"
    return wait_owned(workers, ports, what, even, timeout)


def watch_outputs(bootstrap: str, topic: str) -> TopicWatcher:
    """Reads ``topic`` (read_committed) from the start while the test runs, so tests can
    wait for a number of committed outputs; the final check reads the topic again."""
    watch = TopicWatcher(TopicReader(bootstrap, topic))
    watch.start()
    return watch


def repartition_topic(group: str) -> str:
    return f"{group}.{KEY_BY}.repartition"


def new_group() -> str:
    return f"el-{uuid.uuid4().hex[:12]}"


def topic_partitions(admin: AdminClient, topic: str) -> int:
    return len(admin.list_topics(topic, timeout=10).topics[topic].partitions)


# -- checking results -------------------------------------------------------------------


def source_partition_of(bootstrap: str, src: str, total: int) -> dict[int, int]:
    """Input ``n`` -> the source partition it was written to (read back from the topic)."""
    records = consume_all(bootstrap, src, None, 120)
    assert len(records) == total, f"read {len(records)} inputs, wrote {total}"
    return {r["value"]["n"]: r["partition"] for r in records}


def problems_of(
    outputs: list[dict], inputs: list[dict], partition_of: dict[int, int]
) -> dict[str, Any]:
    """Deviations from exactly-once for el_users' reduce (see the module docstring)."""
    by_n = {r["n"]: r for r in inputs}
    want: dict[str, list[int]] = defaultdict(list)
    for r in inputs:
        want[r["user"]].append(r["n"])
    got: dict[str, list[dict]] = defaultdict(list)
    out_partitions: dict[str, set[int]] = defaultdict(set)
    for r in sorted(outputs, key=lambda r: (r["partition"], r["offset"])):
        got[r["value"]["key"]].append(r["value"])
        out_partitions[r["value"]["key"]].add(r["partition"])
        if r["key"] != r["value"]["key"]:
            raise AssertionError(f"output key {r['key']!r} != value {r['value']}")
    duplicated = missing = reordered = 0
    bad: list[str] = []
    for user, ns in want.items():
        have = got.get(user, [])
        lasts = [v["last"] for v in have]
        counts_ok = [v["count"] for v in have] == list(range(1, len(ns) + 1))
        seen = Counter(lasts)
        duplicated += sum(c - 1 for c in seen.values())
        missing += len(set(ns) - set(seen))
        totals_ok, running, first_bad_total = counts_ok, 0, ""
        for i, v in enumerate(have if counts_ok else []):  # each total: amounts so far
            if v["last"] not in by_n:
                totals_ok = False
                break
            running += by_n[v["last"]]["amount"]
            if v["total"] != running and totals_ok:
                first_bad_total = f" first bad total at count {i + 1}: {v} want {running}"
            totals_ok = totals_ok and v["total"] == running
        order_ok = all(
            [n for n in lasts if partition_of.get(n) == p]
            == sorted(n for n in lasts if partition_of.get(n) == p)
            for p in {partition_of.get(n) for n in lasts}
        )
        reordered += not order_ok
        if not (counts_ok and sorted(lasts) == sorted(ns) and totals_ok):
            bad.append(
                f"{user}: counts {[v['count'] for v in have][:10]} lasts {lasts[:10]}"
                f" want {len(ns)} outputs, totals_ok={totals_ok}{first_bad_total}"
            )
    return {
        "outputs": len(outputs),
        "expected": len(inputs),
        "users_wrong": len(bad),
        "duplicated": duplicated,
        "missing": missing,
        "unexpected_users": sorted(set(got) - set(want))[:5],
        "users_in_several_output_partitions": sum(len(s) > 1 for s in out_partitions.values()),
        "reordered_users": reordered,
        "examples": bad[:3],
    }


def assert_exactly_once(outputs: list[dict], inputs: list[dict], partition_of: dict[int, int]):
    problems = problems_of(outputs, inputs, partition_of)
    assert (
        problems["users_wrong"] == 0
        and not problems["unexpected_users"]
        and problems["outputs"] == problems["expected"]
        and problems["users_in_several_output_partitions"] == 0
    ), f"not exactly once: {problems}"
    return problems


def users_per_source_partition(inputs: list[dict], partition_of: dict[int, int]):
    """User -> source partition -> how many of its records are there."""
    out: dict[str, Counter[int]] = defaultdict(Counter)
    for r in inputs:
        out[r["user"]][partition_of[r["n"]]] += 1
    return out


def repartition_owners(bootstrap: str, topic: str) -> dict[str, set[int]]:
    """User -> the repartition partitions holding its records (read_committed)."""
    owners: dict[str, set[int]] = defaultdict(set)
    for r in consume_all(bootstrap, topic, None, 120):
        owners[r["value"][0]].add(r["partition"])  # a [key, value, event time] envelope
    return owners


# -- 1. aggregates through the repartition topic with 1, 2 and 3 workers ----------------


@pytest.mark.parametrize("nworkers", [1, 2, 3])
def test_repartitioned_aggregate_matches_reference(
    kafka_bootstrap, new_topic, kafka_admin, tmp_path, nworkers
):
    """4 source partitions; ``aggregate(count, total)`` per user (not the record key)
    equals the reference with 1, 2 and 3 workers (3 workers: the repartition topic has 6
    partitions via ``key_by(partitions=6)``), exactly once (counts 1..N, once each).
    Why the repartition topic matters: every user's records sit in at least 3 of the 4
    source partitions (state kept per source partition would split each user's count)
    while each user's records sit in exactly one repartition partition; and the group
    spreads the source partitions, and the repartition partitions, evenly over the
    workers, so every user's records are read by several workers."""
    partitions, total, nusers = 4, 4000, 40
    rep_partitions = 6 if nworkers == 3 else partitions
    src, out = new_topic(partitions=partitions), new_topic(partitions=3)
    group = new_group()
    env = job_env(in_=src, out=out, kind="aggregate")
    if nworkers == 3:
        env.update(job_env(partitions=rep_partitions))
    workers = Workers(JOB, kafka_bootstrap, group, env, FAST, tmp_path / "logs")
    inputs = make_inputs(total, nusers, seed=nworkers)
    watch = None
    try:
        procs = [
            workers.start(f"w{i}", ["--state-dir", str(tmp_path / "state")])
            for i in range(nworkers)
        ]
        rep = repartition_topic(group)
        wait_for(lambda: rep in kafka_admin.list_topics(timeout=10).topics, 60, rep)
        assert topic_partitions(kafka_admin, rep) == rep_partitions
        everything = {(src, p) for p in range(partitions)} | {
            (rep, p) for p in range(rep_partitions)
        }
        owners = wait_balanced(workers, [w.http_port for w in procs], everything)
        if nworkers > 1:
            owners = wait_spread(
                workers, [w.http_port for w in procs], {src: partitions, rep: rep_partitions}
            )
        watch = watch_outputs(kafka_bootstrap, out)
        produce_json(kafka_bootstrap, src, inputs, key=random_id)
        took = watch.wait(total, 120, workers.check_alive, workers.logs_tail)
        final_owners = ownership([w.http_port for w in procs])
        workers.stop_all()
    finally:
        if watch is not None:
            watch.halt()
        workers.close()
    outputs = consume_all(kafka_bootstrap, out, None, 120)
    partition_of = source_partition_of(kafka_bootstrap, src, total)

    # The reference: per user, the count and the sum of amounts of all its records.
    reference: dict[str, tuple[int, int]] = {}
    for r in inputs:
        c, t = reference.get(r["user"], (0, 0))
        reference[r["user"]] = (c + 1, t + r["amount"])
    final: dict[str, dict] = {}
    counts: dict[str, list[int]] = defaultdict(list)
    for r in sorted(outputs, key=lambda r: (r["partition"], r["offset"])):
        final[r["value"]["key"]] = r["value"]
        counts[r["value"]["key"]].append(r["value"]["count"])
    assert len(outputs) == total, f"{len(outputs)} outputs for {total} inputs"
    assert {u: (v["count"], v["total"]) for u, v in final.items()} == reference
    for user, (n, _) in reference.items():
        assert counts[user] == list(range(1, n + 1)), f"{user}: counts {counts[user][:20]}"

    # Why the repartition topic matters: users span source partitions (and owners).
    spread = users_per_source_partition(inputs, partition_of)
    assert all(len(parts) >= 3 for parts in spread.values()), {
        u: dict(c) for u, c in spread.items() if len(c) < 3
    }
    rep_owners = repartition_owners(kafka_bootstrap, rep)
    assert set(rep_owners) == set(reference)
    assert all(len(ps) == 1 for ps in rep_owners.values()), "a user in two repartition partitions"
    assert sum(1 for _ in rep_owners) == nusers
    figures: dict[str, Any] = {"workers": nworkers, "processed_s": round(took, 1)}
    if nworkers > 1:
        src_owner = {p: port for port, tps in owners.items() for t, p in tps if t == src}
        # Per worker, what it would have counted per user had it kept state per source
        # partition: each user's count split over several workers, none of them right.
        split = {  # several source partitions of one worker add up
            u: Counter(
                {
                    port: sum(n for p, n in c.items() if src_owner[p] == port)
                    for port in set(src_owner.values())
                }
            )
            for u, c in spread.items()
        }
        several = [u for u, c in split.items() if sum(1 for n in c.values() if n) >= 2]
        figures["users_split_over_workers"] = len(several)
        assert len(several) == nusers, f"users not split across workers: {split}"
        # ...while the repartitioned state gave each user one owner and the true count.
        figures["owners"] = {port: sorted(tps) for port, tps in owners.items()}
        figures["owners_stable"] = final_owners == owners
        if several:
            figures["example"] = {
                "user": several[0],
                "per_worker_if_not_repartitioned": dict(split[several[0]]),
                "true_count": reference[several[0]][0],
            }
    print(f"repartitioned aggregate: {figures}")


def test_plan_names_the_repartition_topic(tmp_path):
    """``weir plan`` shows the split: the repartition topic, and the state reading it."""
    import subprocess
    import sys

    from tests.workers import JOBS, ROOT

    env = {**job_env(in_="orders", out="totals"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "weir.service.cli", "plan", str(JOBS / JOB)],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "repartition topic: el-users.by-user.repartition" in proc.stdout, proc.stdout
    assert (
        "state: counts (reduce) on el-users.by-user.repartition, changelog"
        " el-users.counts.changelog" in proc.stdout
    ), proc.stdout


# -- 2. 1 -> 3 -> 2 -> 1 workers while input flows, with a kill -9 ------------------------


def scale_run(
    bootstrap: str,
    new_topic: Callable[..., str],
    tmp_path: Path,
    *,
    users: int,
    rate: float,
    phase_s: float,
    seed: int,
    extra_kill: bool = False,
    partitions: int = 6,
) -> dict[str, Any]:
    """One worker, then three, then two (the third killed with -9, not restarted), then
    one (SIGTERM); input flows at ``rate`` throughout and stops ``phase_s`` after the
    last change. With ``extra_kill`` the first worker is also killed with -9 and
    restarted (same state dir) while three run. Checks exactly once; returns figures."""
    src, out = new_topic(partitions=partitions), new_topic(partitions=4)
    group = new_group()
    rep = repartition_topic(group)
    everything = {(t, p) for t in (src, rep) for p in range(partitions)}
    args = [*FAST, "--state-dir", str(tmp_path / "state"), "--slots", "2"]
    workers = Workers(JOB, bootstrap, group, job_env(in_=src, out=out), args, tmp_path / "logs")
    planned = make_inputs(int(rate * (12 * phase_s + 400)), users, seed)
    feeder = Feeder(bootstrap, src, planned, rate, key=random_id)
    watch = watch_outputs(bootstrap, out)
    events: list[str] = []
    t0 = time.monotonic()

    def event(what: str) -> None:
        events.append(f"{time.monotonic() - t0:5.1f}s n={feeder.sent:6d}"
                      f" out={len(watch.records):6d} {what}")  # fmt: skip

    def settle(ids: list[str], what: str) -> None:
        started = time.monotonic()
        wait_balanced(workers, [workers.live[i].http_port for i in ids], everything, 120)
        event(f"{what}: settled in {time.monotonic() - started:.1f}s")

    def run_phase() -> None:
        deadline = time.monotonic() + phase_s
        while time.monotonic() < deadline:
            workers.check_alive()
            assert not feeder.errors, feeder.errors[:3]
            time.sleep(0.2)

    try:
        workers.start("w1").wait_running(60)
        feeder.start()
        event("1 worker")
        run_phase()
        workers.start("w2")
        workers.start("w3")
        settle(["w1", "w2", "w3"], "1 -> 3")
        run_phase()
        if extra_kill:
            workers.kill("w1")
            event("kill -9 w1, restart it")
            workers.start("w1")
            settle(["w1", "w2", "w3"], "w1 back")
            run_phase()
        workers.kill("w3")
        event("kill -9 w3: 3 -> 2")
        settle(["w1", "w2"], "3 -> 2")
        run_phase()
        event("SIGTERM w2: 2 -> 1")
        workers.stop("w2")
        settle(["w1"], "2 -> 1")
        run_phase()
        total = feeder.stop()
        event(f"input stopped at {total}")
        assert total < len(planned), "the feeder ran out of planned input mid-run"
        catch_up = watch.wait(total, 180, workers.check_alive, workers.logs_tail)
        event(f"all {total} outputs committed ({catch_up:.1f}s after the input stopped)")
        workers.stop_all()
    finally:
        feeder.halt()
        watch.halt()
        workers.close()
    for line in events:
        print(line)
    inputs = planned[:total]
    outputs = consume_all(bootstrap, out, None, 180)
    partition_of = source_partition_of(bootstrap, src, total)
    problems = assert_exactly_once(outputs, inputs, partition_of)
    return {
        "inputs": total,
        "outputs": problems["outputs"],
        "reordered_users": problems["reordered_users"],
        "events": events,
    }


@pytest.mark.slow  # ~31 s; the default suite restarts with other slots and processes
def test_scale_1_3_2_1_with_kill_small(kafka_bootstrap, new_topic, tmp_path):
    """CI version: 6 source partitions, 300 users, ~300 records/s, a few seconds per
    phase; per user counts 1..N, each input once, nothing missing."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    figures = scale_run(
        kafka_bootstrap, new_topic, tmp_path, users=300, rate=300, phase_s=3, seed=seed
    )
    assert figures["inputs"] > 3000, figures


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_scale_1_3_2_1_with_kills_full(kafka_bootstrap, new_topic, tmp_path):
    """3000 users, ~1000 records/s, 15 s per phase, and the first worker also killed
    with -9 (and restarted) while three run."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    figures = scale_run(
        kafka_bootstrap, new_topic, tmp_path,
        users=3000, rate=1000, phase_s=15, seed=seed, extra_kill=True,
    )  # fmt: skip
    assert figures["inputs"] > 60_000, figures


# -- 3. restarts with other --slots and --processes keep the state ------------------------


def child_pids(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return sorted(out)


def test_restart_with_other_slots_and_processes_keeps_state(kafka_bootstrap, new_topic, tmp_path):
    """The same worker id restarted as ``--slots 1``, then ``--processes 2 --slots 2``
    (a child killed with -9 mid-phase must come back), then ``--processes 1 --slots 3``:
    counts continue across every restart (each user starts at 1 exactly once) and the
    whole run is exactly once."""
    partitions, users, batch = 4, 60, 1500
    src, out = new_topic(partitions=partitions), new_topic(partitions=2)
    group = new_group()
    rep = repartition_topic(group)
    everything = {(t, p) for t in (src, rep) for p in range(partitions)}
    state = tmp_path / "state"
    args = [*FAST, "--state-dir", str(state)]
    workers = Workers(
        JOB, kafka_bootstrap, group, job_env(in_=src, out=out), args, tmp_path / "logs"
    )
    inputs: list[dict] = []
    watch = watch_outputs(kafka_bootstrap, out)
    figures: dict[str, Any] = {}

    def feed(seed: int) -> None:
        records = make_inputs(batch, users, seed, first=len(inputs))
        inputs.extend(records)
        produce_json(kafka_bootstrap, src, records, key=random_id)
        watch.wait(len(inputs), 120, workers.check_alive, workers.logs_tail)

    try:
        # A: one process, one slot.
        w = workers.start("w", ["--slots", "1"])
        wait_balanced(workers, [w.http_port], everything)
        feed(1)
        workers.stop("w")
        first_phase = len(watch.records)

        # B: two processes of two slots, on ports P and P+1; kill -9 one child.
        w = workers.start("w", ["--slots", "2"], processes=2)
        ports = w.ports
        owners = wait_balanced(workers, ports, everything)
        ids = {status_at(p)["worker_id"] for p in ports}
        assert ids == {"w.0", "w.1"}, ids
        slots = {len(status_at(p)["slots"]) for p in ports}
        assert slots == {2}, slots
        figures["processes_2_owners"] = {p: len(tps) for p, tps in owners.items()}
        figures["processes_2_restored"] = {p: restored(p) for p in ports}
        assert sum(figures["processes_2_restored"].values()) > 0, "no state restored"
        feed(2)
        children = child_pids(w.proc.pid)
        assert len(children) == 2, f"children of the supervisor: {children}"
        victim = next(c for c in children if "--process-index\x001" in _cmdline(c))
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: len(child_pids(w.proc.pid)) == 2 and victim not in child_pids(w.proc.pid),
            30, "the supervisor to restart the killed child", check=workers.check_alive,
        )  # fmt: skip
        figures["child_restarted_after_s"] = round(time.monotonic() - killed_at, 1)
        wait_balanced(workers, ports, everything)
        feed(3)
        children = child_pids(w.proc.pid)
        workers.stop("w")
        assert not [c for c in children if Path(f"/proc/{c}").exists() and _alive_pid(c)], (
            "children outlived their supervisor"
        )
        assert {p.name for p in (state / group).iterdir()} >= {"w", "w.0", "w.1"}

        # C: one process of three slots, on w's (stale) local state from phase A.
        w = workers.start("w", ["--slots", "3"])
        wait_balanced(workers, [w.http_port], everything)
        figures["processes_1_restored"] = restored(w.http_port)
        feed(4)
        workers.stop("w")
    finally:
        watch.halt()
        workers.close()
    print(f"slots/processes restarts: {figures}")
    outputs = consume_all(kafka_bootstrap, out, None, 120)
    partition_of = source_partition_of(kafka_bootstrap, src, len(inputs))
    assert_exactly_once(outputs, inputs, partition_of)
    later = [r["value"] for r in watch.records[first_phase:]]
    assert sum(1 for v in later if v["count"] == 1) == len(
        {r["user"] for r in inputs[batch:]} - {r["user"] for r in inputs[:batch]}
    ), "a user's count started again at 1 after a restart"
    assert max(v["count"] for v in later) > batch // users, "counts did not continue"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def _alive_pid(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


# -- 4. standby replicas make a kill -9 failover restore less -----------------------------


def failover_run(
    bootstrap: str,
    new_topic: Callable[..., str],
    tmp_path: Path,
    *,
    standby: bool,
    users: int,
    partitions: int = 4,
) -> dict[str, Any]:
    """Two workers build state for ``users`` users (two records each); w2 is killed with
    -9; returns how many records the survivor w1 restored taking w2's partitions over,
    then checks the run (plus input after the failover) is exactly once."""
    src, out = new_topic(partitions=partitions), new_topic(partitions=4)
    group = new_group()
    rep = repartition_topic(group)
    everything = {(t, p) for t in (src, rep) for p in range(partitions)}
    args = [*FAST, "--state-dir", str(tmp_path / "state"), "--slots", "2"]
    if standby:
        args += ["--standby-replicas", "1"]
    workers = Workers(JOB, bootstrap, group, job_env(in_=src, out=out), args, tmp_path / "logs")
    rng = random.Random(users)
    inputs = [
        {"n": n, "user": f"u{n % users}", "amount": rng.randrange(1, 100)} for n in range(2 * users)
    ]
    after = make_inputs(1000, users, seed=7, first=len(inputs))
    watch = watch_outputs(bootstrap, out)
    figures: dict[str, Any] = {"standby": standby, "users": users}
    try:
        w1 = workers.start("w1")
        w1.wait_running(60)
        w2 = workers.start("w2")
        owners = wait_balanced(workers, [w1.http_port, w2.http_port], everything)
        moved = sorted(p for t, p in owners[w2.http_port] if t == rep)
        figures["moved_partitions"] = moved
        produce_json(bootstrap, src, inputs, key=random_id, timeout=120)
        figures["build_s"] = round(
            watch.wait(len(inputs), 180, workers.check_alive, workers.logs_tail), 1
        )
        time.sleep(3.0)  # standby replicas tail the changelogs continuously
        before = restored(w1.http_port)
        workers.kill("w2")
        killed = time.monotonic()
        wait_balanced(workers, [w1.http_port], everything, 120)
        figures["failover_s"] = round(time.monotonic() - killed, 1)
        figures["restored"] = restored(w1.http_port) - before
        inputs += after
        produce_json(bootstrap, src, after, key=random_id)
        watch.wait(len(inputs), 120, workers.check_alive, workers.logs_tail)
        workers.stop_all()
    finally:
        watch.halt()
        workers.close()
    changelog = consume_all(
        bootstrap, f"{group}.{OPERATOR}.changelog", None, 120, decode_json=False
    )
    figures["changelog_records_moved"] = sum(1 for r in changelog if r["partition"] in moved)
    figures["users_moved"] = len(
        {r["key"] for r in changelog if r["partition"] in moved}
    )  # one state key per user
    outputs = consume_all(bootstrap, out, None, 120)
    partition_of = source_partition_of(bootstrap, src, len(inputs))
    assert_exactly_once(outputs, inputs, partition_of)
    print(f"failover: {figures}")
    return figures


def _standby_comparison(kafka_bootstrap, new_topic, tmp_path, users: int) -> None:
    without = failover_run(
        kafka_bootstrap, new_topic, tmp_path / "without", standby=False, users=users
    )
    with_ = failover_run(kafka_bootstrap, new_topic, tmp_path / "with", standby=True, users=users)
    figures = {"without": without, "with": with_}
    # Without standby the survivor replays the moved partitions' whole changelog
    # (at least one record per moved user); with it, only what it had not tailed yet.
    assert without["restored"] >= without["users_moved"] > 0, figures
    assert with_["restored"] < without["restored"], figures
    assert with_["restored"] <= 0.1 * with_["users_moved"], figures


def test_standby_replicas_shrink_failover_restore(kafka_bootstrap, new_topic, tmp_path):
    """CI version: 5k users over 4 partitions."""
    _standby_comparison(kafka_bootstrap, new_topic, tmp_path, users=5_000)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_standby_replicas_shrink_failover_restore_big(kafka_bootstrap, new_topic, tmp_path):
    """100k users over 4 partitions."""
    _standby_comparison(kafka_bootstrap, new_topic, tmp_path, users=100_000)


# -- 5. a source topic gains partitions -------------------------------------------------------


def grow(admin: AdminClient, topic: str, partitions: int) -> None:
    futures = admin.create_partitions([NewPartitions(topic, partitions)], request_timeout=30)
    futures[topic].result(timeout=30)
    wait_for(lambda: topic_partitions(admin, topic) == partitions, 30, f"{topic} to grow")


@pytest.mark.parametrize("layout", ["workers-1", "workers-2", "processes-2"])
def test_source_growth_stops_a_job_keyed_by_the_record_key(
    kafka_bootstrap, new_topic, kafka_admin, tmp_path, layout
):
    """keyed_count.py keeps state per source partition (``key_by()``): when its source
    gains a partition every worker stops (whichever gets the new partition first, then
    the one its partitions move to), non-zero, with one line naming the topic. Under
    ``--processes 2`` the supervisor stops too (the child that got the partition exits
    1 and is restarted; the restarted one refuses to start — exit 2, a changelog with
    fewer partitions than its input — which stops the set)."""
    src, out = new_topic(partitions=2), new_topic(partitions=2)
    group = new_group()
    workers = Workers(
        "keyed_count.py", kafka_bootstrap, group, job_env(in_=src, out=out),
        [*FAST, "--state-dir", str(tmp_path / "state")], tmp_path / "logs",
    )  # fmt: skip
    watch = watch_outputs(kafka_bootstrap, out)
    codes, texts, took = {}, {}, {}
    try:
        if layout == "processes-2":
            procs = {"w0": workers.start("w0", processes=2)}
            ports = procs["w0"].ports
        else:
            procs = {f"w{i}": workers.start(f"w{i}") for i in range(int(layout[-1]))}
            ports = [w.http_port for w in procs.values()]
        wait_balanced(workers, ports, {(src, 0), (src, 1)})
        produce_json(kafka_bootstrap, src, [{"n": i} for i in range(200)],
                     key=lambda r: f"k{r['n'] % 10}".encode())  # fmt: skip
        watch.wait(200, 60, workers.check_alive, workers.logs_tail)
        grown = time.monotonic()
        grow(kafka_admin, src, 3)
        workers.live.clear()  # their exits are what we wait for
        for worker_id, w in procs.items():
            codes[worker_id] = w.wait(90)
            took[worker_id] = round(time.monotonic() - grown, 1)
            texts[worker_id] = w.log_path.read_text(errors="replace")
    finally:
        watch.halt()
        workers.close()
    print(f"{layout}: stopped after the growth: {took}, exit codes {codes}")
    for worker_id, text in texts.items():
        assert codes[worker_id] != 0, text[-3000:]
        errors = [line for line in text.splitlines() if line.startswith("weir: error:")]
        assert errors, text[-3000:]
        assert f"topic {src!r} grew from 2 to at least 3 partitions" in errors[0], errors[0]
        assert all(src in line for line in errors), errors
        if layout != "processes-2":
            assert len(errors) == 1, errors
        assert "Traceback" not in text, text[-3000:]
    assert len(watch.records) == 200, "outputs after the growth"


@pytest.mark.parametrize("nworkers", [1, 2])
def test_source_growth_under_a_repartitioned_job_keeps_running(
    kafka_bootstrap, new_topic, kafka_admin, tmp_path, nworkers
):
    """el_users.py keys through a repartition topic (fixed at 2 partitions): its source
    growing from 2 to 4 partitions is just more input; the new partitions are read from
    their start, and the whole run stays exactly once."""
    src, out = new_topic(partitions=2), new_topic(partitions=2)
    group = new_group()
    rep = repartition_topic(group)
    args = [*FAST, "--state-dir", str(tmp_path / "state")]
    workers = Workers(
        JOB, kafka_bootstrap, group, job_env(in_=src, out=out), args, tmp_path / "logs"
    )
    watch = watch_outputs(kafka_bootstrap, out)
    inputs = make_inputs(1500, 50, seed=5)
    more = make_inputs(1500, 50, seed=6, first=len(inputs))
    try:
        procs = [workers.start(f"w{i}") for i in range(nworkers)]
        ports = [w.http_port for w in procs]
        wait_balanced(workers, ports, {(t, p) for t in (src, rep) for p in range(2)})
        produce_json(kafka_bootstrap, src, inputs, key=random_id)
        watch.wait(len(inputs), 60, workers.check_alive, workers.logs_tail)
        grow(kafka_admin, src, 4)
        produce_json(kafka_bootstrap, src, more, key=random_id)  # into all four
        inputs += more
        wanted = {(src, p) for p in range(4)} | {(rep, p) for p in range(2)}
        wait_balanced(workers, ports, wanted, 90)
        watch.wait(len(inputs), 90, workers.check_alive, workers.logs_tail)
        workers.check_alive()
        assert topic_partitions(kafka_admin, rep) == 2
        workers.stop_all()
    finally:
        watch.halt()
        workers.close()
    partition_of = source_partition_of(kafka_bootstrap, src, len(inputs))
    assert {partition_of[r["n"]] for r in more} == {0, 1, 2, 3}
    outputs = consume_all(kafka_bootstrap, out, None, 120)
    assert_exactly_once(outputs, inputs, partition_of)


def test_changed_repartition_count_is_refused(kafka_bootstrap, new_topic, kafka_admin, tmp_path):
    """A group's repartition topic exists with 4 partitions; the job now says
    ``key_by(partitions=6)``. The keyed state behind it is partitioned by 4, so the
    worker refuses to start (exit 2) with one line naming both counts — rather than
    silently keeping 4 or splitting keys from their state."""
    src, out = new_topic(partitions=4), new_topic()
    group = new_group()
    env = job_env(in_=src, out=out, partitions=4)
    workers = Workers(JOB, kafka_bootstrap, group, env, FAST, tmp_path / "logs")
    try:
        workers.start("w1", ["--state-dir", str(tmp_path / "state")]).wait_running(60)
        workers.stop("w1")
        assert topic_partitions(kafka_admin, repartition_topic(group)) == 4
        workers.env = job_env(in_=src, out=out, partitions=6)
        again = workers.start("w1", ["--state-dir", str(tmp_path / "state")])
        workers.live.clear()  # its exit is what we wait for
        code = again.wait(60)
        text = again.log_path.read_text(errors="replace")
    finally:
        workers.close()
    assert code == 2, text[-2000:]
    rep = repartition_topic(group)
    assert f"repartition topic {rep!r} has 4 partitions but the job's" in text, text[-2000:]
    assert "key_by(partitions=6)" in text and "Traceback" not in text, text[-2000:]
    assert topic_partitions(kafka_admin, rep) == 4
