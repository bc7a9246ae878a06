"""Nexmark-style benchmark: Weir against the other Python stream processors.

One command runs every query on every system that can express it, in turn,
on the same pre-filled input, checks every output against a batch reference,
and writes ``benchmarks/results/nexmark.{md,json,png}``::

    .venv/bin/python -m benchmarks.nexmark.run                 # defaults below
    .venv/bin/python -m benchmarks.nexmark.run --events 50000 --repeats 1 --systems weir,quix

Throughput (per query, per system; median of ``--repeats``): the input topic
holds ``--events`` Nexmark events (4 partitions) written before any processor
starts; each run uses a fresh consumer group and output topic (broker
LogAppendTime). records/s = input events ÷ (last output's append time - the
moment consumption could start: the consumer group's partition assignment,
polled every 30 ms; Bytewax, which assigns partitions itself, is timed from its
first output on stateless queries and from its measured start-up on windowed
ones). For the windowed q5/q7 the last timed output is the last window the
data closes, and the events are those up to its firing
(`reference.Reference.measured_events`). The output is read back
(read_committed) and checked against the reference. CPU is the processor
process's user+system seconds over the same stretch (all threads, from /proc,
interpolated between 0.2 s samples) per million events; peak RSS is its VmHWM.

Latency (``--latency-rate`` events/s for ``--latency-seconds``, q1 and the
running count, after ``--latency-warmup`` s): the generator runs in its own
process and stamps each event with the wall-clock time it was due; this
script reads the output read_committed as it appears and records
``receive time - event time`` for every output, so exactly-once systems are
charged for holding outputs until their transaction commits.

Setup: ``benchmarks/nexmark/setup_peers.sh`` (the peers' venvs and the
chart/profiler tools). A peer whose venv is missing is reported as such.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaException, Message

from benchmarks.common import (
    RESULTS,
    ROOT,
    TMP,
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
    percentile,
    prefill,
    process_cpu_seconds,
    read_topic,
    start_broker,
    unique,
    write_report,
)
from benchmarks.nexmark import jvm
from benchmarks.nexmark.generator import (
    AUCTION_PROPORTION,
    ORDERED,
    PERSON_PROPORTION,
    PROPORTION_DENOMINATOR,
    GeneratorConfig,
    generate,
)
from benchmarks.nexmark.reference import JoinProgress, Reference, WindowProgress
from benchmarks.nexmark.spec import JOIN_QUERIES, QUERIES
from benchmarks.nexmark.systems import BY_NAME, PEERS, SYSTEMS, System
from tests.ports import consecutive_free_ports

NTMP = TMP / "nexmark"
TOOLS_PY = PEERS / "tools" / "bin" / "python"


# -- sampling a child ------------------------------------------------------------------
class Sampler:
    """CPU and peak RSS of one process (and the machine, broker) every ``interval`` s.

    With ``tree`` the process's children count too (a ``--processes`` supervisor and
    its workers): CPU is their sum, peak RSS the sum of each one's peak.
    """

    def __init__(
        self, pid: int, broker_pid: int | None, interval: float = 0.2, tree: bool = False
    ) -> None:
        self.pid, self.broker_pid, self.tree = pid, broker_pid, tree
        self.samples: list[tuple[float, float, float, float, float]] = []
        self.peak_rss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(interval)

    def sample(self) -> None:
        pids = [self.pid, *children_of(self.pid)] if self.tree else [self.pid]
        rss = 0.0
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                if pid == self.pid:
                    return
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    rss += int(line.split()[1]) / 1024
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        cpu = sum(process_cpu_seconds(pid) for pid in pids)
        if cpu <= 0 and self.samples:
            return  # gone (zombie): keep the last real sample
        self.samples.append(
            (
                time.time(),
                cpu,
                process_cpu_seconds(self.broker_pid) if self.broker_pid else 0.0,
                time.process_time(),
                machine_busy_seconds(),
            )
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def at(self, t: float) -> tuple[float, ...]:
        """Interpolated (child, broker, harness, machine) CPU seconds at wall time ``t``."""
        s = self.samples
        if not s:
            return (0.0, 0.0, 0.0, 0.0)
        if t <= s[0][0]:
            return s[0][1:]
        for a, b in itertools.pairwise(s):
            if a[0] <= t <= b[0]:
                f = (t - a[0]) / max(b[0] - a[0], 1e-9)
                return tuple(x + (y - x) * f for x, y in zip(a[1:], b[1:], strict=True))
        return s[-1][1:]

    def between(self, t0: float, t1: float) -> dict[str, float]:
        a, b = self.at(t0), self.at(t1)
        child, broker, me, machine = (y - x for x, y in zip(a, b, strict=True))
        wall = max(t1 - t0, 1e-3)
        return {
            "child": child,
            "broker": broker,
            "harness": me,
            "other_cores": max(0.0, machine - child - broker - me) / wall,
        }


# -- reading the output back -------------------------------------------------------------
def read_output(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, Any]]:
    """Every record of ``topic`` (read_committed): [(append time ms, decoded value)]."""
    out: list[tuple[int, Any]] = []
    loads = orjson.loads

    def note(m: Message) -> None:
        try:
            value = loads(m.value())
        except orjson.JSONDecodeError:
            value = {"undecodable": m.value()[:100].decode(errors="replace")}
        out.append((m.timestamp()[1], value))

    read_topic(bootstrap, topic, partitions, note)
    return out


def cleanup_topics(admin: Any, *needles: str) -> None:
    """Delete every topic whose name contains one of ``needles`` (run-specific names)."""
    with contextlib.suppress(Exception):
        names = [t for t in admin.list_topics(timeout=10).topics if any(n in t for n in needles)]
        if names:
            delete_topics(admin, names)


STALLED_S = 15.0  # a windowed run whose output stands still this long is judged as it is
STARTUP: dict[str, list[float]] = {}  # system -> seconds from spawn to first output


def group_assigned(admin: Any, group: str) -> bool:
    """Does ``group`` have a member with partitions assigned (consumption can start)?"""
    try:
        desc = admin.describe_consumer_groups([group])[group].result(timeout=5)
    except Exception:
        return False
    return str(desc.state).endswith("STABLE") and any(
        m.assignment.topic_partitions for m in desc.members
    )


def wait_ready(admin: Any, group: str, child: Child, timeout: float = 60.0) -> float:
    """Until ``group`` has a member with partitions (or ``timeout``): seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        child.check_running()
        if group_assigned(admin, group):
            return time.monotonic() - started
        time.sleep(0.25)
    return time.monotonic() - started


def log_markers(child: Child, name: str) -> list[int]:
    """The epoch-ms times of a JVM peer's ``nexmark-peer: <name> <ms>`` log lines."""
    prefix = f"nexmark-peer: {name} "
    with contextlib.suppress(OSError):
        return [
            int(line[len(prefix) :].split()[0])
            for line in child.log_path.read_text(errors="replace").splitlines()
            if line.startswith(prefix)
        ]
    return []


def wait_marker(child: Child, name: str, count: int, timeout: float = 120.0) -> float:
    """Until the peer has printed ``count`` ``name`` markers (or ``timeout``): seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        child.check_running()
        if len(log_markers(child, name)) >= count:
            break
        time.sleep(0.1)
    return time.monotonic() - started


def _http_port(system: System) -> int:
    """Weir serves HTTP on port .. port + processes - 1; the other systems on none."""
    return consecutive_free_ports(system.parallelism) if system.name.startswith("weir") else 0


def _prepare(launch: Any) -> None:
    for cmd in launch.prepare:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise BenchmarkError(f"{' '.join(cmd)}: {done.stderr.strip()[-300:]}")


# -- one throughput run ----------------------------------------------------------------------
def throughput_run(
    system: System,
    query: str,
    run: int,
    args: argparse.Namespace,
    broker: Any,
    source: str,
    ref: Reference,
    probe: OffsetProbe,
) -> dict[str, Any]:
    admin = admin_client(broker.bootstrap)
    tag = f"{system.name}-{query}-r{run}"
    output, group = unique(f"nx-out-{tag}"), unique(f"nx-{tag}")
    state_dir = NTMP / group
    state_dir.mkdir(parents=True, exist_ok=True)
    create_topics(admin, [output], args.partitions, {"message.timestamp.type": "LogAppendTime"})
    port = _http_port(system)
    launch = system.launch(
        query, bootstrap=broker.bootstrap, source=source, output=output, group=group,
        state_dir=state_dir, partitions=args.partitions, http_port=port, tail=False,
    )  # fmt: skip
    _prepare(launch)
    child = Child(f"nexmark-{tag}", launch.cmd, env=launch.env, http_port=port)
    spawned = time.time()
    tree = system.parallelism > 1 and system.runtime == "python"  # Weir's --processes
    sampler = Sampler(child.pid, broker.pid, tree=tree)
    n = ref.n
    windowed = query in ("q5", "q7", "q8")
    timeout = args.timeout or 90 + n / 2000
    deadline = time.monotonic() + timeout
    assigned: float | None = None  # wall time the group first had its partitions assigned
    # Windowed queries are done when every window the data closes has its true maximum in
    # the output (read as it appears), joins when every row they must emit is there:
    # consuming all input is not enough when a later stage (behind a repartition topic or
    # a join's own topic, maybe in another process) is still at work. A system that never
    # gets there is stopped once its output stood still for STALLED_S.
    # A join may hold its first windows for the side clocks' settle time (10 s) first.
    stall = 2 * STALLED_S if query in JOIN_QUERIES else STALLED_S
    progress: WindowProgress | JoinProgress | None = None
    if system.done == "committed" and query in JOIN_QUERIES:
        progress = JoinProgress(ref, query)
    elif system.done == "committed" and windowed:
        progress = WindowProgress(ref, query)
    tail = None
    if progress is not None:
        tail = Tail(broker.bootstrap, output, lambda _, m: progress.note(orjson.loads(m.value())))
        tail.start()
    try:
        last_end, stable_since = -1, time.monotonic()
        while True:
            watch_group = system.done == "committed" and system.start == "group"
            if assigned is None and watch_group and group_assigned(admin, group):
                assigned = time.time()
                continue
            if time.monotonic() > deadline:
                raise BenchmarkError(f"not done after {timeout:.0f}s: {child.tail()}")
            if system.done == "exit":
                if not child.alive():
                    child.check_exit(child.proc.returncode)
                    break
            else:
                child.check_running()
                try:
                    committed = probe.committed(group, source, args.partitions)
                    end = sum(probe.end_offsets(output, args.partitions))
                except KafkaException:
                    committed, end = 0, 0
                if end != last_end:
                    last_end, stable_since = end, time.monotonic()
                if committed >= n and (
                    progress is None or progress.done or time.monotonic() - stable_since >= stall
                ):
                    break
            time.sleep(0.03 if assigned is None and watch_group else 0.2)
        sampler.sample()
    finally:
        sampler.stop()
        if tail is not None:
            tail.stop()
        code = child.stop(timeout=30)
        probe.forget(group)
    outputs = read_output(broker.bootstrap, output, args.partitions)
    values = [v for _, v in outputs]
    check = ref.check(query, values, allow_duplicates=not system.exactly_once)
    result: dict[str, Any] = {
        "system": system.name, "query": query, "run": run, "check": check.as_dict(),
        "exit_code": code, "peak_rss_mb": round(sampler.peak_rss_mb, 1),
    }  # fmt: skip
    stamps = [outputs[i][0] for i in check.measured]
    if not outputs or not stamps:
        result["error"] = f"no measurable output ({len(outputs)} records)"
        return result
    first = min(t for t, _ in outputs) / 1000
    last = max(stamps) / 1000
    # When consumption started: the group's assignment for systems with a consumer
    # group; for Flink (which assigns partitions itself) when its first source task read
    # its first record; for Bytewax (likewise) its first output on a stateless query,
    # and on a windowed one its start-up time measured on those.
    first_reads = log_markers(child, "first-record") if system.start == "log" else []
    if assigned is not None:
        start, how = assigned, "group assignment"
    elif first_reads:
        start, how = min(first_reads) / 1000, "first record read"
    elif not windowed:
        start, how = first, "first output"
        STARTUP.setdefault(system.name, []).append(first - spawned)
    elif STARTUP.get(system.name):
        start, how = spawned + statistics.median(STARTUP[system.name]), "process start + start-up"
    else:
        start, how = first, "first output (no start-up measured)"
    span = max(last - start, 1e-3)
    events = ref.measured_events(query)
    cpu = sampler.between(start, last)
    result.update(
        {
            "records_per_s": events / span,
            "measured_events": events,
            "span_s": span,
            "start": how,
            "first_output_after_s": first - start,
            "output_span_rate": events / max(last - first, 1e-3),
            "cpu_s": cpu["child"],
            "cpu_s_per_million": cpu["child"] / events * 1e6,
            "broker_cpu_s": cpu["broker"],
            "other_load_cores": cpu["other_cores"],
            "startup_s": start - spawned,
        }
    )
    result.update(second_half(query, ref, [outputs[i] for i in check.measured], sampler))
    if not check.ok and query in system.not_verifiable:
        result["not_verified"] = check.detail
    elif not check.ok:
        result["error"] = f"wrong output: {check.detail}"
    with contextlib.suppress(OSError):
        shutil.rmtree(state_dir)
    cleanup_topics(admin, output, group)
    return result


WARM_QUERIES = ("q0", "q1", "count")


def second_half(
    query: str, ref: Reference, measured: list[tuple[int, Any]], sampler: Sampler
) -> dict[str, float]:
    """Throughput and CPU over the second half of the input only ("warm"): from the
    output by which half of the events had been processed to the last one.

    The whole-run figures include each system's warm-up, which costs a JVM far more
    than Weir (class loading, its JIT compiling the hot path while it runs); the second
    half shows the pace once that is mostly done. Only for the queries with one output
    per input event or bid (`WARM_QUERIES`), where the share of outputs appended is the
    share of the input processed; q2's outputs bunch (the auctions it selects come and
    go) and q5/q7 emit in bursts when windows close, so neither says when half the
    input was done.
    """
    if query not in WARM_QUERIES or len(measured) < 4:
        return {}
    total = ref.measured_events(query)
    stamps = sorted(t for t, _ in measured)
    progress = [(t, total * (i + 1) / len(stamps)) for i, t in enumerate(stamps)]
    t_mid, e_mid = next((t, e) for t, e in progress if e >= total / 2)
    t_last = progress[-1][0]
    span, events = (t_last - t_mid) / 1000, total - e_mid
    if span < 0.05 or events <= 0:
        return {}
    cpu = sampler.between(t_mid / 1000, t_last / 1000)["child"]
    return {
        "warm_records_per_s": events / span,
        "warm_cpu_s_per_million": cpu / events * 1e6,
        "warm_events": events,
    }


# -- one latency run -------------------------------------------------------------------------
def latency_run(
    system: System, query: str, args: argparse.Namespace, broker: Any
) -> dict[str, Any]:
    admin = admin_client(broker.bootstrap)
    tag = f"{system.name}-{query}-lat"
    source, output, group = (
        unique(f"nx-lin-{tag}"), unique(f"nx-lout-{tag}"), unique(f"nx-{tag}"),
    )  # fmt: skip
    state_dir = NTMP / group
    state_dir.mkdir(parents=True, exist_ok=True)
    create_topics(admin, [source, output], args.partitions)
    port = _http_port(system)
    launch = system.launch(
        query, bootstrap=broker.bootstrap, source=source, output=output, group=group,
        state_dir=state_dir, partitions=args.partitions, http_port=port, tail=True,
    )  # fmt: skip
    _prepare(launch)
    child = Child(f"nexmark-{tag}", launch.cmd, env=launch.env, http_port=port)
    sampler = Sampler(child.pid, broker.pid)
    n = int(args.latency_rate * args.latency_seconds)
    bids = sum(
        1 for i in range(n) if i % PROPORTION_DENOMINATOR >= PERSON_PROPORTION + AUCTION_PROPORTION
    )
    latencies: list[tuple[int, float]] = []  # (event ts, latency ms)

    def note(received: float, m: Message) -> None:
        ts = orjson.loads(m.value())["ts"]
        latencies.append((ts, received * 1000 - ts))

    reader = Tail(broker.bootstrap, output, note, fetch_wait_ms=5)
    try:
        if system.done == "exit":
            time.sleep(5)  # no consumer group to watch: give it time to start
            ready_s = 5.0
        elif system.start == "log":
            ready_s = wait_marker(child, "source-open", system.parallelism)
        else:
            ready_s = wait_ready(admin, group, child)
        reader.start()
        started = time.time()
        gen = subprocess.run(
            [
                str(ROOT / ".venv" / "bin" / "python"), "-m", "benchmarks.nexmark.generator",
                "--bootstrap", broker.bootstrap, "--topic", source, "--events", str(n),
                "--rate", str(args.latency_rate),
            ],
            cwd=ROOT, capture_output=True, text=True, timeout=args.latency_seconds + 120,
        )  # fmt: skip
        if gen.returncode != 0:
            raise BenchmarkError(f"generator failed: {gen.stderr[-500:]}")
        gen_info = orjson.loads(gen.stdout.strip().splitlines()[-1])
        deadline = time.monotonic() + 30
        while len(latencies) < bids and time.monotonic() < deadline:
            child.check_running()
            time.sleep(0.2)
        cpu_s = sampler.between(started, time.time())["child"]
    finally:
        reader.stop()
        sampler.stop()
        code = child.stop(timeout=30)
    warm_ms = (started + args.latency_warmup) * 1000
    kept = sorted(lat for ts, lat in latencies if ts >= warm_ms)
    result: dict[str, Any] = {
        "system": system.name, "query": query, "rate": args.latency_rate,
        "seconds": args.latency_seconds, "expected": bids, "received": len(latencies),
        "exit_code": code, "ready_s": round(ready_s, 1), "generator": gen_info,
        "cpu_cores": cpu_s / max(args.latency_seconds, 1),
    }  # fmt: skip
    if kept:
        result.update(
            {
                "p50_ms": percentile(kept, 50),
                "p99_ms": percentile(kept, 99),
                "max_ms": kept[-1],
                "measured": len(kept),
            }
        )
    if len(latencies) < bids:
        result["error"] = f"only {len(latencies)}/{bids} outputs within 30 s of the last input"
    elif len(latencies) > bids and system.exactly_once:
        result["error"] = f"{len(latencies) - bids} duplicates under exactly-once"
    with contextlib.suppress(OSError):
        shutil.rmtree(state_dir)
    cleanup_topics(admin, source, output, group)
    return result


# -- summary and report ---------------------------------------------------------------------------
def summarize(systems: list[System], queries: list[str], runs: list[dict]) -> dict[str, Any]:
    cells: dict[str, dict[str, Any]] = {}
    for s in systems:
        cells[s.name] = {}
        for q in queries:
            if q not in s.queries:
                cells[s.name][q] = {"status": "n/a", "why": s.not_expressible.get(q, "not run")}
                continue
            mine = [r for r in runs if r["system"] == s.name and r["query"] == q]
            ok = [r for r in mine if "error" not in r]
            if not mine:
                cells[s.name][q] = {"status": "not run"}
                continue
            cell: dict[str, Any] = {
                "status": "ok" if len(ok) == len(mine) else ("failed" if not ok else "partial"),
                "runs": len(mine),
                "verified_runs": sum(1 for r in mine if r["check"]["ok"]),
                "errors": [r["error"] for r in mine if "error" in r],
                "duplicates": sum(r["check"]["duplicates"] for r in mine),
            }
            if any("not_verified" in r for r in mine):
                cell["not_verified"] = s.not_verifiable[q]
            if ok:
                cell.update(
                    {
                        "records_per_s": statistics.median(r["records_per_s"] for r in ok),
                        "records_per_s_all": [round(r["records_per_s"]) for r in ok],
                        "cpu_s_per_million": statistics.median(r["cpu_s_per_million"] for r in ok),
                        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in ok),
                        "other_load_cores": statistics.median(r["other_load_cores"] for r in ok),
                    }
                )
                warm = [r for r in ok if "warm_records_per_s" in r and q in WARM_QUERIES]
                if warm:
                    cell["warm_records_per_s"] = statistics.median(
                        r["warm_records_per_s"] for r in warm
                    )
                    cell["warm_cpu_s_per_million"] = statistics.median(
                        r["warm_cpu_s_per_million"] for r in warm
                    )
            cells[s.name][q] = cell
    ratios: dict[str, Any] = {}
    for q, peer in itertools.product(queries, ("quix", "quix-state")):
        w, qx = cells.get("weir", {}).get(q, {}), cells.get(peer, {}).get(q, {})
        if "records_per_s" in w and "records_per_s" in qx:
            ratios[f"weir/{peer} {q}"] = w["records_per_s"] / qx["records_per_s"]
    for q in ("q0", "q1", "q2"):
        raw = cells.get("raw", {}).get(q, {})
        for name in ("weir", "weir-alo"):
            w = cells.get(name, {}).get(q, {})
            if "records_per_s" in w and "records_per_s" in raw:
                ratios[f"{name}/raw {q}"] = w["records_per_s"] / raw["records_per_s"]
    return {"cells": cells, "ratios": ratios, "jvm_ratios": jvm_ratios(cells, queries)}


RATIO_KEYS = (
    "records_per_s", "warm_records_per_s", "cpu_s_per_million", "warm_cpu_s_per_million",
    "peak_rss_mb",
)  # fmt: skip
# Weir against the JVM engines at the same number of cores: (Weir, engine, cores).
JVM_PAIRS = (
    ("weir", "flink", 1), ("weir", "kstreams", 1), ("weir-2", "flink-2", 2),
    ("weir-2", "kstreams-2", 2),
)  # fmt: skip


def jvm_ratios(cells: dict[str, dict[str, Any]], queries: list[str]) -> list[dict[str, Any]]:
    """Weir ÷ Flink and Weir ÷ Kafka Streams per query, with 1 and with 2 processes/threads:
    throughput (above 1: Weir is faster), CPU seconds per million events (below 1: Weir
    uses less), both over the whole input and over its second half, and peak RSS (below 1:
    Weir is smaller)."""
    out = []
    for weir, peer, cores in JVM_PAIRS:
        if weir not in cells or peer not in cells:
            continue
        row: dict[str, Any] = {"weir": weir, "peer": peer, "cores": cores, "queries": {}}
        for q in queries:
            w, p = cells[weir].get(q, {}), cells[peer].get(q, {})
            row["queries"][q] = {
                key: w[key] / p[key] for key in RATIO_KEYS if key in w and key in p and p[key]
            }
        out.append(row)
    return out


def _fmt_cell(cell: dict[str, Any], key: str, fmt: str) -> str:
    if cell.get("status") == "n/a":
        return "n/a"
    if key not in cell:
        return "FAILED" if cell.get("status") == "failed" else "-"
    mark = "" if cell["status"] == "ok" else " (partial)"
    if "not_verified" in cell:
        mark += " (not verified)"
    return fmt.format(cell[key]) + mark


def markdown(report: dict[str, Any]) -> str:
    info, args = report["machine"], report["args"]
    systems = [BY_NAME[s] for s in report["systems"]]
    queries = report["queries"]
    cells = report["summary"]["cells"]
    with_jvm = any(s.runtime == "jvm" for s in systems)
    lines = [
        "# Nexmark: Weir against "
        + ("Flink and Kafka Streams" if with_jvm else "the Python stream processors"),
        "",
        f"{machine_header(info)} (one local broker, same machine)",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
        f"Command: `{report['command']}`",
        "",
        *([f"**Note:** {args['note']}", ""] if args.get("note") else []),
        f"Input: {args['events']:,} Nexmark events (persons:auctions:bids 1:3:46, JSON,"
        f" bids keyed by auction; seed {args['seed']}, {args['event_rate']:g} events per"
        f" second of event time) in {args['partitions']} partitions, written before each"
        f" processor starts; every system reads all of it. Median of {args['repeats']}"
        " repeats. Every system is one process (rows saying 2 processes, parallelism 2 or"
        " 2 threads use two cores), 1 s commit/checkpoint interval."
        " Queries: see `benchmarks/nexmark/spec.py`.",
        "",
    ]
    if with_jvm:
        lines += [JVM_SETTINGS, ""]
    lines += [
        "## Throughput (input events/s)",
        "",
        format_table(
            ["system", *queries],
            [
                [s.label]
                + [_fmt_cell(cells[s.name][q], "records_per_s", "{:,.0f}") for q in queries]
                for s in systems
            ],
            markdown=True,
        ),
        "",
    ]
    warm = any("warm_records_per_s" in c for row in cells.values() for c in row.values())
    if warm:
        lines += [
            "## Throughput over the second half of the input (input events/s)",
            "",
            "From the output by which half of the events had been processed to the last:"
            " the pace once start-up and warm-up (the JVMs' class loading and JIT) are"
            f" mostly behind. Only {', '.join(WARM_QUERIES)}: one output per input event or"
            " bid, so the share of outputs written is the share of the input done.",
            "",
            _system_table(systems, queries, cells, "warm_records_per_s", "{:,.0f}"),
            "",
        ]
    ratios = report["summary"]["ratios"]
    if ratios:
        unchecked = {
            f"weir/{name} {q}"
            for name, row in cells.items()
            for q, cell in row.items()
            if "not_verified" in cell
        }
        lines += [
            "Ratios: "
            + ", ".join(
                f"{k} = {v:.2f}x" + (" (not verified)" if k in unchecked else "")
                for k, v in ratios.items()
            ),
            "",
        ]
    lines += _jvm_ratio_tables(report["summary"].get("jvm_ratios") or [], queries)
    loads = sorted(r["other_load_cores"] for r in report["runs"] if "other_load_cores" in r)
    if loads:
        lines += [
            f"Other load during the timed stretches (cores used by other processes on this"
            f" {info['nproc']}-CPU machine): median {statistics.median(loads):.2f},"
            f" range {loads[0]:.2f}-{loads[-1]:.2f}. Above ~0.1 the numbers are disturbed;"
            " compare systems within this report, not across reports.",
            "",
        ]
    lines += [
        "## Verified against the batch reference",
        "",
        format_table(
            ["system", *queries],
            [[s.label] + [_verified(cells[s.name][q]) for q in queries] for s in systems],
            markdown=True,
        ),
        "",
        "## CPU seconds per million input events (processor process, all threads)",
        "",
        format_table(
            ["system", *queries],
            [
                [s.label]
                + [_fmt_cell(cells[s.name][q], "cpu_s_per_million", "{:.1f}") for q in queries]
                for s in systems
            ],
            markdown=True,
        ),
        "",
        *(
            [
                "## CPU seconds per million input events over the second half of the input",
                "",
                _system_table(systems, queries, cells, "warm_cpu_s_per_million", "{:.1f}"),
                "",
            ]
            if warm
            else []
        ),
        "## Peak RSS (MB)",
        "",
        format_table(
            ["system", *queries],
            [
                [s.label] + [_fmt_cell(cells[s.name][q], "peak_rss_mb", "{:.0f}") for q in queries]
                for s in systems
            ],
            markdown=True,
        ),
        "",
    ]
    lat = report.get("latency") or []
    if lat:
        lines += [
            f"## Latency at {args['latency_rate']:g} events/s"
            f" ({args['latency_seconds']} s, first {args['latency_warmup']} s dropped)",
            "",
            format_table(
                ["system", "query", "p50 ms", "p99 ms", "max ms", "outputs", "note"],
                [
                    [
                        BY_NAME[r["system"]].label,
                        r["query"],
                        f"{r['p50_ms']:.0f}" if "p50_ms" in r else "-",
                        f"{r['p99_ms']:.0f}" if "p99_ms" in r else "-",
                        f"{r['max_ms']:.0f}" if "max_ms" in r else "-",
                        f"{r.get('received', 0)}/{r.get('expected', 0)}",
                        r.get("error", ""),
                    ]
                    for r in lat
                ],
                markdown=True,
            ),
            "",
            "Latency: wall-clock time this script received an output (read_committed)"
            " minus the time its input event was due (the generator stamps each event"
            " with its scheduled send time; all on one clock).",
            "",
        ]
    na = [
        (s.label, q, s.not_expressible[q])
        for s in systems
        for q in queries
        if q in s.not_expressible
    ]
    if na:
        lines += ["## Not expressible / not run", ""]
        lines += [f"- {label}, {q}: {why}" for label, q, why in na]
        lines += [""]
    unverified = [
        f"- {s.label}, {q}: {cells[s.name][q]['not_verified']}. Runs: "
        + "; ".join(
            f"{r['run']}: {r['not_verified']}"
            for r in report["runs"]
            if r["system"] == s.name and r["query"] == q and "not_verified" in r
        )
        for s in systems
        for q in queries
        if "not_verified" in cells[s.name][q]
    ]
    if unverified:
        lines += [
            "## Not verified",
            "",
            "These runs' outputs differ from the batch reference for a known reason of the"
            " system's own semantics; their figures are those of what it computed.",
            "",
            *unverified,
            "",
        ]
    failures = [
        f"- {BY_NAME[r['system']].label}, {r['query']}, run {r['run']}: {r['error']}"
        for r in report["runs"] if "error" in r
    ] + [f"- latency {BY_NAME[r['system']].label}, {r['query']}: {r['error']}"
         for r in lat if "error" in r]  # fmt: skip
    if failures:
        lines += ["## Failed runs", "", *failures, ""]
    lines += [
        "## How it is measured",
        "",
        f"Slow systems ({', '.join(s.label for s in systems if s.slow) or 'none'}) read"
        f" the first {min(args['slow_events'], args['events']):,} events of the same input"
        " (a separate topic holding that prefix), checked against the prefix's reference,"
        " so that their repeats fit the time budget.",
        "",
        "records/s: input events ÷ (last output record's broker append time - the moment"
        " the processor's consumer group got its partitions; Flink, which assigns"
        " partitions itself: the moment its first source task read its first record;"
        " Bytewax, which has no group: its first output, or on q5/q7 its start-up time"
        " measured on the stateless queries). For q5/q7 the last timed output is the last"
        " window the data closes (windows left open at the end of the input are not"
        " timed) and the events are"
        " those up to its firing. Exactly-once outputs become visible at their"
        " transaction's commit, up to one commit interval after their append time. CPU:"
        " the processor's user+system seconds over the same stretch (all threads; for"
        " Weir with 2 processes the supervisor and both workers, and peak RSS the sum of"
        " their peaks). Other load: cores"
        " used meanwhile by processes other than the processor, the broker and this"
        " script (noise on a shared machine).",
        "",
        "Verification: q0-q2 exact records by event number; count: every auction's counts"
        " are exactly 1..n, each carrying its bid's event time; q5/q7: every emitted"
        " result equals the reference, and every window the data closes has its true"
        " maximum; q3: exactly one row per qualifying auction, equal to the batch join's;"
        " q8: every row a true (person, window) of the batch join, each once, and every"
        " row of a window that ends 10 s before the data does."
        " At-least-once rows may repeat records (counted, allowed).",
        "",
    ]
    return "\n".join(lines)


JVM_SETTINGS = (
    "Flink: a local MiniCluster in one JVM (parallelism = task slots), checkpoints every"
    " 1 s in exactly-once mode, RocksDB state with incremental checkpoints, object reuse"
    " on, the Kafka source reading read_committed and the Kafka sink in exactly-once mode"
    " (transactions committed with each checkpoint). Kafka Streams: `exactly_once_v2`,"
    " `commit.interval.ms` 1000, RocksDB stores with the default record cache, windows"
    " emitted once closed (`suppress`). Both decode every input record's JSON into a"
    " generic tree (Jackson) and encode every output from one, as Weir does with dicts;"
    " JVMs run with their default heap settings. Sources: `benchmarks/nexmark/peers/jvm/`."
)


def _system_table(
    systems: list[System], queries: list[str], cells: dict[str, Any], key: str, fmt: str
) -> str:
    """One figure per system (rows) and query (columns)."""
    return format_table(
        ["system", *queries],
        [[s.label] + [_fmt_cell(cells[s.name][q], key, fmt) for q in queries] for s in systems],
        markdown=True,
    )


def _jvm_ratio_tables(rows: list[dict[str, Any]], queries: list[str]) -> list[str]:
    """Weir ÷ each JVM engine per query: throughput, then CPU per event, then peak RSS."""
    if not rows:
        return []
    out: list[str] = []
    titles = (
        ("records_per_s", "Throughput, Weir ÷ JVM engine (above 1: Weir is faster)"),
        (
            "warm_records_per_s",
            "Throughput over the second half of the input, Weir ÷ JVM engine",
        ),
        ("cpu_s_per_million", "CPU per event, Weir ÷ JVM engine (below 1: Weir uses less)"),
        (
            "warm_cpu_s_per_million",
            "CPU per event over the second half of the input, Weir ÷ JVM engine",
        ),
        ("peak_rss_mb", "Peak RSS, Weir ÷ JVM engine (below 1: Weir is smaller)"),
    )
    for key, title in titles:
        table = [
            [f"{BY_NAME[r['weir']].label} ÷ {BY_NAME[r['peer']].label}"]
            + [
                f"{r['queries'][q][key]:.2f}x" if key in r["queries"].get(q, {}) else "-"
                for q in queries
            ]
            for r in rows
        ]
        out += [f"## {title}", "", format_table(["", *queries], table, markdown=True), ""]
    return out


def _verified(cell: dict[str, Any]) -> str:
    if cell.get("status") in ("n/a", "not run"):
        return cell["status"]
    text = f"{cell['verified_runs']}/{cell['runs']}"
    if cell.get("duplicates"):
        text += f" ({cell['duplicates']} dup)"
    if "not_verified" in cell:
        text += " (not verified: see below)"
    return text


def chart(json_path: Path, png_path: Path) -> str | None:
    if not TOOLS_PY.exists():
        return f"no chart: {TOOLS_PY} missing (run benchmarks/nexmark/setup_peers.sh)"
    proc = subprocess.run(
        [str(TOOLS_PY), str(Path(__file__).parent / "chart.py"), str(json_path), str(png_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return None if proc.returncode == 0 else f"chart failed: {proc.stderr[-500:]}"


# -- main -----------------------------------------------------------------------------------------
def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000, help="input events (default 200k)")
    p.add_argument("--repeats", type=int, default=3, help="runs per cell; the median counts")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--event-rate", type=float, default=1000.0, help="events/s of event time")
    p.add_argument(
        "--base-time-ms",
        type=int,
        default=0,
        help="first event time (default: about N/rate s + 1 h ago)",
    )
    p.add_argument("--queries", default=",".join(QUERIES))
    p.add_argument(
        "--systems",
        default=",".join(s.name for s in SYSTEMS if s.default),
        help="comma-separated (default: the Python comparison); all: "
        + ",".join(s.name for s in SYSTEMS),
    )
    p.add_argument(
        "--slow-events", type=int, default=20_000,
        help="events for the slow systems (Faust): a prefix of the same input",
    )  # fmt: skip
    p.add_argument("--latency-rate", type=float, default=1000.0, help="events/s; 0 = skip")
    p.add_argument("--latency-seconds", type=int, default=15)
    p.add_argument("--latency-warmup", type=float, default=5.0)
    p.add_argument(
        "--latency-systems",
        default=",".join(s.name for s in SYSTEMS if s.latency_queries),
        help="of those in --systems, which get latency runs",
    )
    p.add_argument("--timeout", type=float, default=0.0, help="per run; default 90 s + N/2000")
    p.add_argument(
        "--note", default="", help="a sentence for the report's head (e.g. what else ran)"
    )
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--no-warmup", action="store_true", help="skip the unmeasured warm-up run")
    p.add_argument("--out", default=str(RESULTS / "nexmark"), help="results path prefix")
    p.add_argument(
        "--render", metavar="JSON", help="only recompute the summary, .md, .png of a .json"
    )
    args = p.parse_args(argv)
    args.query_list = [q.strip() for q in args.queries.split(",") if q.strip()]
    args.system_list = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.latency_list = [s.strip() for s in args.latency_systems.split(",") if s.strip()]
    bad = [q for q in args.query_list if q not in QUERIES]
    bad += [s for s in args.system_list + args.latency_list if s not in BY_NAME]
    if bad:
        p.error(f"unknown queries/systems: {bad}")
    return args


def build_jvm_peers(systems: list[System]) -> list[str]:
    """Build (once) the jars of the JVM ``systems``; the names of those that failed."""
    if not systems:
        return []
    try:
        for engine in {s.engine for s in systems}:
            jvm.jar(engine)
    except jvm.BuildError as exc:
        print(f"JVM peers: {exc}", flush=True)
        return [s.name for s in systems]
    return []


def render(json_path: Path) -> int:
    """Recompute the summary of a results .json from its runs and rewrite it with the .md
    and .png (after a change to the report or the summary's rules)."""
    report = orjson.loads(json_path.read_bytes())
    systems = [BY_NAME[s] for s in report["systems"]]
    report["summary"] = summarize(systems, report["queries"], report["runs"])
    write_report(json_path.with_suffix(""), report, markdown(report))
    problem = chart(json_path, json_path.with_suffix(".png"))
    print(problem or f"wrote {json_path.with_suffix('.md')} and .png")
    return 0 if problem is None else 1


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.render:
        return render(Path(args.render))
    started = time.monotonic()
    systems = [BY_NAME[s] for s in args.system_list]
    missing = [s.name for s in systems if not s.available()]
    if missing:
        print(
            f"not installed (run benchmarks/nexmark/setup_peers.sh; the JVM peers need java"
            f" and mvn): {missing}",
            flush=True,
        )
    broken = build_jvm_peers([s for s in systems if s.runtime == "jvm" and s.available()])
    if broken:
        print(f"JVM peers not built, skipped: {broken}", flush=True)
        systems = [s for s in systems if s.name not in broken]
    versions = {"weir": BY_NAME["weir"].version()}
    for s in systems:
        versions.setdefault(s.package, s.version())
    if any(s.runtime == "jvm" for s in systems):
        versions["java"] = jvm.java_version()
    print(f"generating {args.events:,} events…", flush=True)
    # Event time ends about an hour ago: old enough to be the past for every system,
    # recent enough that the broker's 7-day time retention never deletes the input
    # (or the repartition topics, which carry event timestamps) in the middle of a run.
    span_ms = int(args.events * 1000 / args.event_rate)
    base = args.base_time_ms or (int(time.time() * 1000) - span_ms - 3_600_000) // 60_000 * 60_000
    args.base_time_ms = base
    cfg = GeneratorConfig(seed=args.seed, base_time_ms=base, event_rate=args.event_rate)
    events = generate(args.events, cfg)
    ref = Reference([v for _, v, _ in events])
    slow_n = min(args.slow_events, args.events)
    slow_ref = Reference([v for _, v, _ in events[:slow_n]]) if slow_n < args.events else ref
    broker = start_broker()
    info = machine_info(broker.kafka_version)
    print(f"broker {broker.bootstrap} (Kafka {broker.kafka_version})", flush=True)
    admin = admin_client(broker.bootstrap)
    source = unique("nexmark-events")
    create_topics(admin, [source], args.partitions, {"retention.ms": "-1"})
    took = prefill(broker.bootstrap, source, events, config=ORDERED)
    print(f"pre-filled {source} in {took:.1f}s", flush=True)
    slow_source = source
    if slow_ref is not ref:
        slow_source = unique("nexmark-prefix")
        create_topics(admin, [slow_source], args.partitions, {"retention.ms": "-1"})
        prefill(broker.bootstrap, slow_source, events[:slow_n], config=ORDERED)
        print(f"pre-filled {slow_source} with the first {slow_n:,} events", flush=True)
    del events
    probe = OffsetProbe(broker.bootstrap)
    runs: list[dict[str, Any]] = []
    latency: list[dict[str, Any]] = []
    NTMP.mkdir(parents=True, exist_ok=True)
    try:
        if not args.no_warmup and BY_NAME["raw"].available():
            print("warm-up (raw loop, q0, unmeasured)… ", end="", flush=True)
            try:
                throughput_run(BY_NAME["raw"], "q0", 0, args, broker, source, ref, probe)
                print("done", flush=True)
            except BenchmarkError as exc:
                print(f"FAILED: {exc}", flush=True)
        for run in range(1, args.repeats + 1):
            for q in args.query_list:
                for s in systems:
                    if q not in s.queries or not s.available():
                        continue
                    print(f"run {run}/{args.repeats} {q} {s.label}: ", end="", flush=True)
                    try:
                        r = throughput_run(
                            s, q, run, args, broker,
                            slow_source if s.slow else source, slow_ref if s.slow else ref, probe,
                        )  # fmt: skip
                    except BenchmarkError as exc:
                        r = {"system": s.name, "query": q, "run": run, "error": str(exc),
                             "check": {"ok": False, "duplicates": 0}}  # fmt: skip
                    runs.append(r)
                    if "records_per_s" in r:
                        c = r["check"]
                        verdict = "ok" if c["ok"] else "FAILED: " + c["detail"]
                        if "not_verified" in r:
                            verdict = "not verified: " + c["detail"]
                        print(
                            f"{r['records_per_s']:,.0f} ev/s, {r['cpu_s_per_million']:.1f} CPU"
                            f" s/1M, {r['peak_rss_mb']:.0f} MB, other load"
                            f" {r['other_load_cores']:.2f}, check"
                            f" {verdict}" + (f", {c['duplicates']} dup" if c["duplicates"] else ""),
                            flush=True,
                        )
                    else:
                        print(f"FAILED: {r['error']}", flush=True)
        if args.latency_rate > 0:
            for name in args.latency_list:
                s = BY_NAME[name]
                if s not in systems or not s.available():
                    continue
                for q in s.latency_queries:
                    if q not in args.query_list:
                        continue
                    print(f"latency {q} {s.label} at {args.latency_rate:g}/s: ", end="", flush=True)
                    try:
                        r = latency_run(s, q, args, broker)
                    except BenchmarkError as exc:
                        r = {"system": s.name, "query": q, "error": str(exc)}
                    latency.append(r)
                    if "p99_ms" in r:
                        print(
                            f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms,"
                            f" {r['received']}/{r['expected']}"
                            + (f" ({r['error']})" if "error" in r else ""),
                            flush=True,
                        )
                    else:
                        print(f"FAILED: {r.get('error')}", flush=True)
    finally:
        probe.close()
        cleanup_topics(admin, source, slow_source)
    present = [s for s in systems]
    report = {
        "machine": info,
        "versions": versions,
        "command": command_line("benchmarks.nexmark.run", argv),
        "args": {k: v for k, v in vars(args).items() if k not in ("query_list", "system_list",
                                                                    "latency_list")},
        "systems": [s.name for s in present],
        "labels": {s.name: s.label for s in present},
        "queries": args.query_list,
        "runs": runs,
        "latency": latency,
        "summary": summarize(present, args.query_list, runs),
        "elapsed_s": round(time.monotonic() - started),
    }  # fmt: skip
    text = markdown(report)
    print(text)
    if not args.no_write:
        out = Path(args.out)
        write_report(out, report, text)
        problem = chart(out.with_suffix(".json"), out.with_suffix(".png"))
        print(problem or f"wrote {out.with_suffix('.png')}")
    print(f"elapsed {report['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
