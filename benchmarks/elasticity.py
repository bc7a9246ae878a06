"""Elasticity: CPU-bound scaling with ``--processes``, and what a rebalance costs.

(a) ``cpu``: a CPU-bound keyed job (tests/jobs/el_cpu.py: a map burning ~50 µs of
    pure-Python arithmetic per record, then ``key_by(tag)`` through a repartition
    topic and ``aggregate(count, total)``), exactly-once, run as ``weir run
    --processes 1`` and ``--processes 2`` on this machine. The workers start first,
    on empty topics, and settle their partitions; then the input is written, so the
    figure excludes start-up. records/s = records ÷ (broker append time of the last
    output - that of the first input): end to end, including the pipeline's last
    checkpoint (an output appears only after the repartition records feeding it were
    committed, so output timestamps alone would miss the first epoch). The output is
    read back (read_committed) and must hold exactly one update per input. Runs
    alternate 1, 2, 1, 2, ... so that load from other processes on a shared machine
    hits both alike. A stateless control (the same map, no key_by/aggregate) shows
    what the processes give when the group spreads the CPU work evenly.

(b) ``join`` / ``failover``: tests/jobs/keyed_count.py (a running count per record
    key, state partitioned like the source), 2 source partitions with ``--keys`` keys
    of state each, built by the first worker(s) before the measurement. Input then
    flows at ``--rate`` records/s per partition while a read_committed watcher notes
    when each output becomes visible.
    - ``join``: worker A owns both partitions; worker B joins and takes one
      (cooperative-sticky). Reported: the largest gap between visible outputs of the
      partition that stays on A, before the join (the checkpoint rhythm) and around
      it; the moved partition's largest gap (its pause: A's drain, the rebalance, B's
      restore of its 100k keys, B's first checkpoint); B's restore (records, seconds).
    - ``failover``: A and B own one partition each; B is killed with -9; A takes
      B's partition after the session timeout (6 s here). Same figures, A's restore.
    Both with and without ``--standby-replicas 1`` (on every worker).

Run from the repository root::

    .venv/bin/python -m benchmarks.elasticity                 # everything, 3 runs each
    .venv/bin/python -m benchmarks.elasticity --only cpu --runs 1

Uses ``KAFKA_BOOTSTRAP`` if set, else starts the project's local broker. Results go
to ``benchmarks/results/elasticity.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Message, Producer

from benchmarks.common import (
    RESULTS,
    ROOT,
    TMP,
    AppendSpan,
    BenchmarkError,
    Child,
    OffsetProbe,
    Tail,
    admin_client,
    children_of,
    command_line,
    create_topics,
    delete_topics,
    format_table,
    machine_busy_seconds,
    machine_header,
    machine_info,
    median,
    prefill,
    process_cpu_seconds,
    read_topic,
    send,
    start_broker,
    unique,
    wait_until,
    write_json,
    write_report,
)
from benchmarks.stateful_common import fetch_metrics, metric_sum
from tests.ports import consecutive_free_ports as free_ports

JOBS = ROOT / "tests" / "jobs"
CPU_JOB = JOBS / "el_cpu.py"
COUNT_JOB = JOBS / "keyed_count.py"
FAST = [
    "--kafka", "consumer.session.timeout.ms=6000",
    "--kafka", "consumer.heartbeat.interval.ms=1000",
]  # fmt: skip


# -- processes -------------------------------------------------------------------------


class Weir(Child):
    """``weir run`` with ``--processes`` in its own session (so it and its children are
    killed as a group), HTTP on ``ports``: ``http_port``..``http_port + processes - 1``."""

    def __init__(
        self,
        name: str,
        job: Path,
        bootstrap: str,
        group: str,
        env: dict[str, str],
        args: list[str],
        processes: int = 1,
    ) -> None:
        port = free_ports(processes)
        cmd = [
            sys.executable, "-m", "weir.service.cli", "run", str(job), "--bootstrap", bootstrap,
            "--group", group, "--worker-id", name, "--http-port", str(port),
            "--processes", str(processes), *args,
        ]  # fmt: skip
        super().__init__(f"el-{name}", cmd, env, http_port=port)
        self.processes = processes
        self.ports = [port + i for i in range(processes)]

    def metric(self, name: str, **labels: str) -> float:
        """Sum over this worker's processes of the samples of ``name`` with ``labels``."""
        return sum(metric_sum(fetch_metrics(port), name, **labels) for port in self.ports)

    def pids(self) -> list[int]:
        """The processes doing the work: the children with --processes > 1."""
        return children_of(self.pid) if self.processes > 1 else [self.pid]

    def cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(p) for p in [self.pid, *children_of(self.pid)])

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def dump_stacks(self) -> None:
        """Append py-spy's stack dump of every live worker process to the log (post-mortem)."""
        spy = Path(sys.executable).parent / "py-spy"
        if not spy.exists() or not self.alive():
            return
        for pid in self.pids():
            with contextlib.suppress(Exception):
                out = subprocess.run(
                    [str(spy), "dump", "--pid", str(pid)],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                with self.log_path.open("a") as f:
                    f.write(f"\n--- py-spy dump of {pid}\n{out.stdout}{out.stderr}")


def owned(workers: list[Weir]) -> dict[int, list[str]] | None:
    """Port -> partitions it processes (restored), or None while one is not running."""
    out = {}
    for w in workers:
        for port in w.ports:
            st = w.status(port=port)
            if st is None or st["state"] != "running":
                return None
            out[port] = sorted(set(st["partitions"]) - set(st["restoring"]))
    return out


def settled(workers: list[Weir], total: int, timeout: float = 120) -> dict[int, list[str]]:
    """Until every process of ``workers`` owns some of ``total`` partitions, each once."""

    def ok():
        own = owned(workers)
        if own is None or any(not parts for parts in own.values()):
            return None
        flat = [tp for parts in own.values() for tp in parts]
        return own if len(flat) == len(set(flat)) == total else None

    def alive():
        for w in workers:
            w.check_running()

    return wait_until(ok, timeout, f"{total} partitions to settle", check=alive, every=0.2)


# -- (a) CPU-bound keyed job: --processes 1 vs 2 --------------------------------------------


def calibrate(target_us: float) -> int:
    """Iterations of el_cpu.py's loop that take ``target_us`` here (best of several)."""
    iters = 20_000
    best = float("inf")
    for _ in range(7):
        x = 1
        started = time.perf_counter()
        for _ in range(iters):
            x = (x * 31 + 7) % 1_000_003
        best = min(best, time.perf_counter() - started)
    return max(1, round(target_us * 1e-6 / (best / iters)))


def cpu_records(n: int, tags: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        tag = f"t{rng.randrange(tags)}"
        value = orjson.dumps({"id": i, "v": rng.randrange(100), "tag": tag})
        out.append((str(i).encode(), memoryview(value).tobytes()))
    return out


def read_back(bootstrap: str, topic: str, partitions: int) -> tuple[int, int, int, dict]:
    """(records, first append ms, last append ms, final count per key), read_committed."""
    final: dict[str, int] = {}
    stamps = AppendSpan()

    def note(m: Message) -> None:
        stamps.note(m)
        v = orjson.loads(m.value())
        if "count" in v:  # keyed: the running count per key
            final[v["key"]] = max(final.get(v["key"], 0), v["count"])
        else:  # stateless: each input id once
            final[v["id"]] = final.get(v["id"], 0) + 1

    records = read_topic(bootstrap, topic, partitions, note, timeout=180)
    return records, stamps.first, stamps.last, final


def first_append_ms(bootstrap: str, topic: str, partitions: int) -> int:
    """The smallest broker append time among the first records of ``topic``'s partitions."""
    firsts: dict[int, int] = {}

    def note(m: Message) -> bool:
        firsts.setdefault(m.partition(), m.timestamp()[1])
        return len(firsts) == partitions

    read_topic(bootstrap, topic, partitions, note, timeout=30)
    if not firsts:
        raise BenchmarkError(f"no input in {topic}")
    return min(firsts.values())


def cpu_run(
    bootstrap: str,
    processes: int,
    records: list[tuple[bytes, bytes]],
    iters: int,
    run: int,
    keyed: bool = True,
) -> dict[str, Any]:
    n, partitions = len(records), 4
    admin = admin_client(bootstrap)
    src, out, group = unique("el-cpu-in"), unique("el-cpu-out"), unique("el-cpu")
    # Broker append times on both ends: the first input's and the last output's.
    create_topics(admin, [src, out], partitions, {"message.timestamp.type": "LogAppendTime"})
    worker: Weir | None = None
    try:
        worker = Weir(
            f"cpu-{'k' if keyed else 's'}-p{processes}-r{run}",
            CPU_JOB,
            bootstrap,
            group,
            {
                "WEIR_TEST_IN": src,
                "WEIR_TEST_OUT": out,
                "WEIR_TEST_ITERS": str(iters),
                "WEIR_TEST_KEYED": "1" if keyed else "0",
            },
            ["--slots", "1", "--state-dir", str(TMP / "el-state"), "--log-level", "info", *FAST],
            processes=processes,
        )
        assignment = settled([worker], (2 if keyed else 1) * partitions)
        busy0, cpu0, t0 = machine_busy_seconds(), worker.cpu_seconds(), time.monotonic()
        prefill(bootstrap, src, records)
        wait_until(
            lambda: worker.metric("weir_records_out_total", weir_job="el-cpu", topic=out) >= n,
            60 + n / 1000,
            f"{n} outputs",
            check=worker.check_running,
            every=0.5,
        )
        busy1, cpu1, t1 = machine_busy_seconds(), worker.cpu_seconds(), time.monotonic()
        worker.check_exit(worker.stop())
        got, first_out, last, final = read_back(bootstrap, out, partitions)
        if got != n or sum(final.values()) != n:
            raise BenchmarkError(f"{worker.name}: {got} outputs, counts add to"
                                 f" {sum(final.values())}, for {n} inputs")  # fmt: skip
        first = first_append_ms(bootstrap, src, partitions)
        span = max(1e-3, (last - first) / 1000)
        wall = t1 - t0
        return {
            "variant": "keyed" if keyed else "stateless",
            "processes": processes,
            "run": run,
            "records": n,
            "records_per_s": n / span,
            "span_s": span,
            "first_output_after_s": (first_out - first) / 1000,
            "weir_cores": (cpu1 - cpu0) / wall,
            "machine_busy_cores": (busy1 - busy0) / wall,
            "assignment": {str(p): len(v) for p, v in assignment.items()},
            "assignment_detail": {
                str(p): sorted(
                    x.rsplit("-", 1)[1] if "repartition" not in x else "r" + x.rsplit("-", 1)[1]
                    for x in v
                )
                for p, v in assignment.items()
            },
        }
    finally:
        if worker is not None:
            worker.kill()
        delete_topics(admin, [src, out])


def bench_cpu(bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    iters = calibrate(args.work_us)
    records = cpu_records(args.cpu_records, tags=1000)
    print(f"(a) CPU-bound: {len(records):,} records, {iters} iterations ≈ {args.work_us} µs"
          " per record, 4 source partitions", flush=True)  # fmt: skip
    variants = ("keyed", "stateless") if args.stateless else ("keyed",)
    runs = []
    for run in range(args.runs):
        for variant in variants:
            for processes in (1, 2):
                try:
                    r = cpu_run(bootstrap, processes, records, iters, run, variant == "keyed")
                    print(f"  {variant:9s} --processes {processes} run {run}:"
                          f" {r['records_per_s']:,.0f} rec/s, weir {r['weir_cores']:.2f} cores,"
                          f" machine {r['machine_busy_cores']:.2f} busy, partitions per process"
                          f" {r['assignment_detail']}", flush=True)  # fmt: skip
                except Exception as exc:  # one failed run must not lose the others
                    r = {"variant": variant, "processes": processes, "run": run,
                         "error": str(exc)}  # fmt: skip
                    print(f"  {variant} --processes {processes} run {run}: FAILED {exc}",
                          flush=True)  # fmt: skip
                runs.append(r)
    summary: dict[str, dict[str, dict[str, Any]]] = {}  # variant -> processes -> figures
    ratios = {}
    for variant in variants:
        summary[variant] = {}
        for processes in (1, 2):
            ok = [r for r in runs if r["variant"] == variant and r["processes"] == processes
                  and "error" not in r]  # fmt: skip
            summary[variant][str(processes)] = {
                "records_per_s": median([r["records_per_s"] for r in ok]),
                "all": [round(r["records_per_s"]) for r in ok],
                "weir_cores": median([r["weir_cores"] for r in ok]),
                "machine_busy_cores": median([r["machine_busy_cores"] for r in ok]),
                "split_by_topic": sum(
                    1 for r in ok if processes == 2 and _split_by_topic(r["assignment_detail"])
                ),
                "mixed_all": [  # runs where every process got some of each topic
                    round(r["records_per_s"])
                    for r in ok
                    if processes == 2 and not _split_by_topic(r["assignment_detail"])
                ],
            }
        s = summary[variant]
        ratios[variant] = s["2"]["records_per_s"] / s["1"]["records_per_s"]
        print(f"  {variant} median: 1 process {s['1']['records_per_s']:,.0f} rec/s, 2 processes"
              f" {s['2']['records_per_s']:,.0f} rec/s, ratio {ratios[variant]:.2f}x"
              " (target >= 1.6x)", flush=True)  # fmt: skip
    return {"iters": iters, "work_us": args.work_us, "records": len(records), "runs": runs,
            "summary": summary, "ratio": ratios["keyed"], "ratios": ratios}  # fmt: skip


def _split_by_topic(detail: dict[str, list[str]]) -> bool:
    """Did one process get every source partition and the other every repartition one?"""
    kinds = [{p.startswith("r") for p in parts} for parts in detail.values()]
    return len(kinds) == 2 and all(len(k) == 1 for k in kinds) and kinds[0] != kinds[1]


# -- (b) join and failover -----------------------------------------------------------------


class Arrivals:
    """When each output arrives, per source partition (keys are "p<partition>-k<i>"):
    visible with read_committed, or, with ``committed=False``, appended (when a
    worker produced it, whether or not its transaction has committed yet)."""

    def __init__(self, bootstrap: str, topic: str, committed: bool = True) -> None:
        self.times: dict[int, list[float]] = {0: [], 1: []}
        self.tail = Tail(bootstrap, topic, self._note, committed=committed, from_end=True)
        self.tail.start()

    def _note(self, received: float, m: Message) -> None:
        self.times[int(orjson.loads(m.value())["key"][1])].append(received)


class Feeder(threading.Thread):
    """``rate`` records/s into each of 2 partitions, updating random existing keys."""

    def __init__(self, bootstrap: str, topic: str, keys: int, rate: float) -> None:
        super().__init__(name="feeder", daemon=True)
        self.topic, self.keys, self.rate = topic, keys, rate
        self.sent = 0
        self._halt = threading.Event()
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})

    def run(self) -> None:
        rng = random.Random(3)
        started = time.monotonic()
        while not self._halt.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while self.sent < due:
                n = 10_000_000 + self.sent
                for p in (0, 1):
                    key = f"p{p}-k{rng.randrange(self.keys)}".encode()
                    self.producer.produce(self.topic, b'{"n": %d}' % n, key, partition=p)
                self.sent += 1
            self.producer.poll(0.01)

    def halt(self) -> None:
        self._halt.set()
        self.join(10)
        self.producer.flush(30)


def build_state(bootstrap: str, topic: str, keys: int) -> None:
    """``keys`` distinct keys into each of partitions 0 and 1 (one record per key)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1_000_000,
         "queue.buffering.max.messages": 1_000_000}
    )  # fmt: skip
    for i in range(keys):
        for p in (0, 1):
            send(producer, topic, b'{"n": %d}' % i, f"p{p}-k{i}".encode(), partition=p)
    if producer.flush(120):
        raise BenchmarkError("state input not delivered")


def max_gap(times: list[float], start: float, end: float) -> float:
    """Largest gap between visible outputs within [start, end] (edges count)."""
    inside = sorted(t for t in times if start <= t <= end)
    points = [start, *inside, end]
    return max(b - a for a, b in itertools.pairwise(points))


RESTORED_LINE = re.compile(r"^(\S+ \S+) INFO service\.restore .*restored (\S+)\[(\d+)\]: (\d+)"
                           r" records in ([\d.]+)s")  # fmt: skip


def restore_of(worker: Weir, topic: str, partition: int, after: float) -> dict[str, float] | None:
    """The worker's restore of ``topic[partition]`` logged after wall time ``after``."""
    from datetime import datetime

    for line in worker.log_lines():
        m = RESTORED_LINE.match(line)
        if not m or m[2] != topic or int(m[3]) != partition:
            continue
        at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at >= after - 0.5:
            return {"records": int(m[4]), "seconds": float(m[5]), "done_at": at}
    return None


def rebalance_run(
    bootstrap: str, scenario: str, standby: bool, keys: int, rate: float, run: int
) -> dict[str, Any]:
    admin = admin_client(bootstrap)
    src, out, group = unique("el-rb-in"), unique("el-rb-out"), unique("el-rb")
    create_topics(admin, [src, out], 2)
    env = {"WEIR_TEST_IN": src, "WEIR_TEST_OUT": out}
    args = ["--slots", "2", "--checkpoint-interval-ms", "200", *FAST,
            "--state-dir", str(TMP / "el-state")]  # fmt: skip
    if standby:
        args += ["--standby-replicas", "1"]
    tag = f"{scenario}-{'sb' if standby else 'nosb'}-r{run}"
    a = b = None
    watcher = feeder = appended = None
    probe = OffsetProbe(bootstrap)
    try:
        a = Weir(f"a-{tag}", COUNT_JOB, bootstrap, group, env, args)
        settled([a], 2)
        if scenario == "failover":
            b = Weir(f"b-{tag}", COUNT_JOB, bootstrap, group, env, args)
            settled([a, b], 2)
        build_started = time.monotonic()
        build_state(bootstrap, src, keys)
        wait_until(lambda: probe.committed(group, src, 2) >= sum(probe.end_offsets(src, 2)),
                   120 + keys / 1000, "the state to be built", check=a.check_running,
                   every=0.5)  # fmt: skip
        build_s = time.monotonic() - build_started
        time.sleep(2.0)  # standby replicas catch up
        watcher = Arrivals(bootstrap, out)
        appended = Arrivals(bootstrap, out, committed=False)
        feeder = Feeder(bootstrap, src, keys, rate)
        feeder.start()
        time.sleep(5.0)
        t_event = time.time()
        if scenario == "join":
            b = Weir(f"b-{tag}", COUNT_JOB, bootstrap, group, env, args)
            own = settled([a, b], 2, timeout=180)
            mover, moved_tp = b, own[b.http_port][0]
        else:
            own_b = wait_until(b.status, 30, f"{b.name}'s /status")["partitions"][0]
            b.kill()
            settled([a], 2, timeout=180)
            mover, moved_tp = a, own_b
        t_settled = time.time()
        time.sleep(5.0)
        feeder.halt()
        t_end = time.time()
        time.sleep(1.0)
        watcher.tail.stop()
        appended.tail.stop()
        moved = int(moved_tp.rsplit("-", 1)[1])
        stay = 1 - moved
        t_feed = t_event - 5.0
        restore = restore_of(mover, src, moved, t_event)
        result = {
            "scenario": scenario,
            "standby": standby,
            "run": run,
            "keys_per_partition": keys,
            "build_s": build_s,
            "rate_per_partition": rate,
            "stay_gap_before_s": max_gap(watcher.times[stay], t_feed + 1.0, t_event),
            "stay_gap_around_s": max_gap(watcher.times[stay], t_event, t_end),
            "moved_pause_s": max_gap(watcher.times[moved], t_event, t_end),
            "stay_produce_gap_s": max_gap(appended.times[stay], t_event, t_end),
            "moved_produce_gap_s": max_gap(appended.times[moved], t_event, t_end),
            "settled_after_s": t_settled - t_event,
            "restore_records": restore["records"] if restore else None,
            "restore_s": restore["seconds"] if restore else None,
            "restore_done_after_s": restore["done_at"] - t_event if restore else None,
            "outputs_seen": watcher.tail.count,
            "inputs_fed": 2 * feeder.sent,
        }
        for w in (a, b):
            if w is not None and w.alive() and w.stop() != 0:
                raise BenchmarkError(f"{w.name} did not stop cleanly: {w.tail()}")
        return result
    except BaseException:
        for w in (a, b):
            if w is not None:
                w.dump_stacks()
        raise
    finally:
        probe.close()
        if feeder is not None and feeder.is_alive():
            feeder.halt()
        for arrivals in (watcher, appended):
            if arrivals is not None and arrivals.tail.is_alive():
                arrivals.tail.stop()
        for w in (a, b):
            if w is not None:
                w.kill()
        delete_topics(admin, [src, out])


def bench_rebalance(bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    print(f"(b) rebalances: keyed_count.py, 2 partitions x {args.keys:,} keys of state,"
          f" {args.rate:.0f} records/s per partition", flush=True)  # fmt: skip
    runs = []
    for run in range(args.runs):
        for scenario in args.scenarios:
            for standby in (False, True):
                try:
                    r = rebalance_run(bootstrap, scenario, standby, args.keys, args.rate, run)
                    print(f"  {scenario:8s} standby={standby!s:5s} run {run}: stay gap"
                          f" {r['stay_gap_before_s']:.2f}s before / {r['stay_gap_around_s']:.2f}s"
                          f" around ({r['stay_produce_gap_s']:.2f}s produced); moved pause"
                          f" {r['moved_pause_s']:.2f}s ({r['moved_produce_gap_s']:.2f}s"
                          " produced); restore"
                          f" {r['restore_records']} records in {r['restore_s']}s;"
                          f" build {r['build_s']:.1f}s", flush=True)  # fmt: skip
                except Exception as exc:  # one failed run must not lose the others
                    r = {"scenario": scenario, "standby": standby, "run": run, "error": str(exc)}
                    print(f"  {scenario} standby={standby} run {run}: FAILED {exc}", flush=True)
                runs.append(r)
    summary = []
    for scenario in args.scenarios:
        for standby in (False, True):
            ok = [r for r in runs if r["scenario"] == scenario and r["standby"] == standby
                  and "error" not in r]  # fmt: skip
            if not ok:
                continue

            def med(field: str, rows=ok) -> float | None:
                values = [r[field] for r in rows if r[field] is not None]
                return median(values) if values else None

            summary.append(
                {
                    "scenario": scenario,
                    "standby": standby,
                    "runs": len(ok),
                    **{
                        f: med(f)
                        for f in (
                            "stay_gap_before_s",
                            "stay_gap_around_s",
                            "moved_pause_s",
                            "stay_produce_gap_s",
                            "moved_produce_gap_s",
                            "restore_records",
                            "restore_s",
                            "settled_after_s",
                        )
                    },
                    "moved_pause_all": [round(r["moved_pause_s"], 2) for r in ok],
                }
            )
    return {"keys": args.keys, "rate": args.rate, "runs": runs, "summary": summary}


# -- report -------------------------------------------------------------------------------


def _mixed_note(cpu: dict[str, Any]) -> list[str]:
    """The keyed 2-process runs, by how the group spread the partitions."""
    two = cpu["summary"]["keyed"]["2"]
    mixed = two.get("mixed_all", [])
    if not mixed:
        return []
    one = cpu["summary"]["keyed"]["1"]["records_per_s"]
    split = [v for v in two["all"] if v not in mixed]
    return [
        "Keyed runs with 2 processes where the group gave each process some source and"
        f" some repartition partitions: {', '.join(f'{v:,} rec/s ({v / one:.2f}x)' for v in mixed)}"
        " of the 1-process median; where it split them by topic: "
        + (f"{', '.join(f'{v:,}' for v in split)} rec/s." if split else "no run."),
        "",
    ]


def markdown(info: dict[str, Any], cpu: dict | None, rb: dict | None) -> str:
    lines = [
        "# Elasticity: --processes scaling and rebalance pauses",
        "",
        machine_header(info),
        "",
        "Broker, workers and this script share the machine; so did other people's test"
        " runs while this was measured (see the machine-busy column: 2.0 = both cores).",
    ]
    if cpu:
        rows = []
        for variant, by_p in cpu["summary"].items():
            for p in ("1", "2"):
                s = by_p[p]
                rows.append(
                    [
                        f"{variant}, --processes {p}",
                        f"{s['records_per_s']:,.0f}",
                        f"{s['records_per_s'] / by_p['1']['records_per_s']:.2f}x",
                        f"{s['weir_cores']:.2f}",
                        f"{s['machine_busy_cores']:.2f}",
                        f"{s['split_by_topic']}/{len(s['all'])}" if p == "2" else "-",
                        ", ".join(f"{v:,}" for v in s["all"]),
                    ]
                )
        lines += [
            "",
            "## (a) CPU-bound job, 1 vs 2 processes",
            "",
            f"tests/jobs/el_cpu.py: a map burning {cpu['iters']} loop iterations"
            f" (≈{cpu['work_us']:.0f} µs) per record; keyed: then key_by(tag) → repartition"
            " topic → aggregate(count, total); stateless (control): the map straight to the"
            f" sink. {cpu['records']:,} records, 1000 tags, 4 source partitions (+4"
            " repartition partitions when keyed), exactly-once, 1 slot per process, median"
            " of the runs listed.",
            "",
            f"Measured {cpu['date']}: `{cpu['command']}`",
            "",
            format_table(
                ["", "records/s", "vs 1", "Weir cores", "machine busy", "split by topic", "runs"],
                rows,
                True,
            ),
            "",
            f"Ratio 2 / 1 processes, keyed: **{cpu['ratio']:.2f}x** (target ≥ 1.6x)"
            + (
                f"; stateless control: {cpu['ratios']['stateless']:.2f}x."
                if "stateless" in cpu["ratios"]
                else "."
            ),
            "",
            *_mixed_note(cpu),
            "Weir cores: CPU used by the worker processes ÷ wall time; machine busy: by"
            " everything on the machine (2.00 = both cores busy). split by topic: runs in"
            " which the group gave one process all 4 source partitions (all the map's"
            " CPU work) and the other all 4 repartition partitions.",
        ]
    if rb:
        rows = [
            [
                s["scenario"],
                "yes" if s["standby"] else "no",
                f"{s['stay_gap_before_s']:.2f}",
                f"{s['stay_gap_around_s']:.2f}",
                f"{s['stay_produce_gap_s']:.2f}",
                f"{s['moved_pause_s']:.2f}",
                f"{s['moved_produce_gap_s']:.2f}",
                "-" if s["restore_records"] is None else f"{s['restore_records']:,.0f}",
                "-" if s["restore_s"] is None else f"{s['restore_s']:.2f}",
                ", ".join(str(v) for v in s["moved_pause_all"]),
            ]
            for s in rb["summary"]
        ]
        lines += [
            "",
            "## (b) Rebalance pauses",
            "",
            f"tests/jobs/keyed_count.py, 2 source partitions with {rb['keys']:,} keys of"
            f" state each, {rb['rate']:.0f} records/s per partition, 2 slots, 200 ms"
            " checkpoints, session timeout 6 s. join: worker B joins A, which owned both"
            " partitions. failover: B (owning one partition) is killed with -9. Times are"
            " when outputs became visible to a read_committed consumer; medians.",
            "",
            f"Measured {rb['date']}: `{rb['command']}`",
            "",
            format_table(
                [
                    "scenario",
                    "standby",
                    "stay gap before s",
                    "stay gap around s",
                    "stay produce gap s",
                    "moved pause s",
                    "moved produce gap s",
                    "restored records",
                    "restore s",
                    "moved pause, runs",
                ],
                rows,
                True,
            ),
            "",
            "stay gap: largest gap between visible outputs of the partition that does not"
            " move, in the 5 s before the event (the checkpoint rhythm) and from the event"
            " until 5 s after the group settled. moved pause: largest gap of the moved"
            " partition over that second stretch (for failover it includes the 6 s session"
            " timeout). produce gap: the same for when outputs were appended (a"
            " read_uncommitted reader), i.e. when a worker produced them, committed or not:"
            " where it is small and the visible gap large, the worker kept processing and"
            " the outputs were held back by another producer's open transaction (a killed"
            " worker's, until transaction.timeout.ms, 10 s, aborts it). restore: the new"
            " owner's restore of the moved partition.",
        ]
    lines += [
        "",
        "## Notes",
        "",
        "- Partitions reach processes through the consumer group's cooperative-sticky"
        " assignor, which balances the *number* of partitions per member over all topics"
        " together. With one consumer per process, a member joining a running group was"
        " handed a contiguous run of the sorted partition list, typically one whole topic:"
        " one process ran every source partition (all of the map's CPU work) and the other"
        " only the cheap aggregate (measured 2026-11-24: keyed 0.97x, split by topic in 3"
        " of 3 runs). A worker of a job with repartition topics now joins with one"
        " consumer per stage (weir/service/consumers.py), so each stage is balanced on its own;"
        " 'split by topic' counts runs where one process still got all source partitions.",
        "- Standby replicas tail the partitions a worker does *not* own, so they help a"
        " failover (the survivor has a warm copy) but not a join: the joining worker owns"
        " its partitions from its first assignment and restores them in full, unless its"
        " tailer happened to catch up during the revocation round.",
        "- A restore ends when its read_committed position reaches the changelog's log"
        " end as of the restore's start (the end-of-partition event carries the position"
        " past the final transaction marker): about 0.4-1.5 s per restored partition even"
        " when there is nothing to replay.",
        "- After a kill -9 that is not followed by a restart of the same worker id, the"
        " dead worker's open transaction holds back every read_committed reader of the"
        " partitions it wrote to (output and repartition topics) until the broker aborts it"
        " (transaction.timeout.ms, 10 s, checked every second by this broker): the"
        " survivors keep processing (small produce gaps) but their outputs become visible"
        " late, and a restore of a changelog partition it wrote waits for that abort too"
        " (read_committed hides what was committed after the open transaction).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("cpu", "rebalance"), default=None)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--cpu-records",
        type=int,
        default=300_000,
        help="records per run (300k: the first and last checkpoint and the pipeline"
        " filling up weigh ~1-2 s, which at 100k was a quarter of a 2-process run)",
    )
    p.add_argument("--work-us", type=float, default=50.0)
    p.add_argument(
        "--no-stateless",
        dest="stateless",
        action="store_false",
        help="skip the stateless control (the same map without key_by/aggregate)",
    )
    p.add_argument("--keys", type=int, default=100_000, help="keys of state per partition")
    p.add_argument("--rate", type=float, default=100.0, help="records/s per partition")
    p.add_argument("--scenarios", default="join,failover")
    p.add_argument("--no-write", action="store_true")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="re-render benchmarks/results/elasticity.md from elasticity.json; run nothing",
    )
    args = p.parse_args(argv)
    args.scenarios = args.scenarios.split(",")
    if args.report_only:
        old = json.loads((RESULTS / "elasticity.json").read_text())
        write_report(
            RESULTS / "elasticity",
            old,
            markdown(old["machine"], old.get("cpu"), old.get("rebalance")),
        )
        return 0
    broker = start_broker()
    info = machine_info(broker.kafka_version)
    command = command_line("benchmarks.elasticity", argv)
    cpu = rb = None
    if args.only is not None and (RESULTS / "elasticity.json").exists():
        # --only one part: keep the other part of the last report.
        old = json.loads((RESULTS / "elasticity.json").read_text())
        cpu, rb = old.get("cpu"), old.get("rebalance")
    if args.only in (None, "cpu"):
        cpu = bench_cpu(broker.bootstrap, args)
        cpu.update(command=command, date=info["date"])
        if not args.no_write:  # now too: a later failure must not lose this part
            write_json(RESULTS / "elasticity.json",
                       {"machine": info, "cpu": cpu, "rebalance": rb})  # fmt: skip
    if args.only in (None, "rebalance"):
        rb = bench_rebalance(broker.bootstrap, args)
        rb.update(command=command, date=info["date"])
    if not args.no_write:
        report = {"machine": info, "cpu": cpu, "rebalance": rb}
        write_report(RESULTS / "elasticity", report, markdown(info, cpu, rb))
    print(json.dumps({"cpu_ratio": cpu and round(cpu["ratio"], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
