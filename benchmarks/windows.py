"""Event time: throughput of tumbling and sliding windows (exactly-once), and the
latency from a record's production to its window's result being readable.

Part 1 (throughput). N pre-filled records ``{"id", "v", "tag", "ts"}`` keyed by
tag (default 200k records, 1,000 keys, event times evenly spread over 100 s, 4
partitions), then one record per partition far in the future, which moves the
watermark past every window so that all of them fire. Two jobs, exactly-once
with 1 s checkpoints, 1 slot:

* `jobs/window_tumbling.py`: ``window(Tumbling(seconds=1)).aggregate(count="count")``
* `jobs/window_sliding.py`: ``window(Sliding(seconds=10, every=1))
  .aggregate(count="count", mean=("mean", "v"))`` (every record is in 10 windows)

records/s is the processing rate (the slots' processed-records counter in
``/status``, from the first poll that saw records processed until all were);
"end to end" is N over the time from that first poll until the last window
result was readable by a read_committed consumer (a thread of this script
counts them as they become visible). Every result is read back and checked
against the counts and means computed here; exactly-once means no duplicates.

Part 2 (latency). A fresh worker runs the tumbling job (1 s windows, no
out-of-orderness allowance, exactly-once, 1 s checkpoints) while this script
produces R records/s (default 2,000/s for 30 s, 100 keys) with ``ts`` = the
wall-clock time of production, and a read_committed consumer in this script
notes when each window result becomes visible. For every result of a window
``[s, s+1000)``::

    latency = (wall time the result was received by the read_committed consumer)
              - (production wall time of the window's last record, over all keys)

Since event time is production time, the window's last record is produced just
before the window end, so this is, within a few ms, "window end (wall clock) to
result visible": the wait for the watermark to pass the window end, firing, and
the wait for the checkpoint that commits the result. Windows of the first 3 s
(warm-up) and the last, partial one are left out. Also reported: the same from
the key's own last record, and ``weir_end_to_end_latency_seconds`` (the
worker's histogram: from a source record's timestamp to the commit of the
checkpoint that covers it).

Run from the repository root::

    .venv/bin/python -m benchmarks.windows            # defaults, ~5 minutes on 2 cores

Results go to ``benchmarks/results/windows.{json,md}``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Message, Producer

from benchmarks.common import (
    RESULTS,
    ROOT,
    TMP,
    BenchmarkError,
    Child,
    CpuSnapshot,
    OffsetProbe,
    Tail,
    admin_client,
    cpu_figures,
    create_topics,
    delete_topics,
    format_table,
    machine_header,
    median,
    open_run,
    percentile,
    prefill,
    read_topic,
    result_rows,
    row_arguments,
    run_figures,
    run_rows,
    select_rows,
    summary_of,
    unique,
)
from benchmarks.stateful_common import (
    close_report,
    fetch_metrics,
    histogram_quantile,
    metric_sum,
    profile_md,
    profile_run,
    remove_tree,
    vm_status_mb,
    wait_committed,
    wait_ready,
    watch_processing,
)
from tests.ports import free_port

MODULE = "benchmarks.windows"
JOBS = Path(__file__).resolve().parent / "jobs"
BASE_MS = 1_700_000_000_000  # event time of the first record (a multiple of 10 s)
FLUSH_KEY = b"~flush"


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    job: str
    operator: str
    size_s: float
    slide_s: float  # == size_s for tumbling windows
    key_by_fn: bool = False  # key_by(fn): through the repartition topic <group>.by-tag.repartition
    ooo_s: float = 0.0  # the source's max_out_of_orderness
    idle_s: float | None = None  # the source's idle_timeout
    flush_tags: int = 1  # flush records per partition (see `produce_flush`)
    flush_after: bool = False  # produce them once every record was processed (not before)
    root: Path = ROOT  # the checkout whose code runs the job

    def windows_of(self, ts: int) -> list[int]:
        """Start of every window ``ts`` belongs to (as Weir assigns them)."""
        size, slide = round(self.size_s * 1000), round(self.slide_s * 1000)
        start = ts - ts % slide
        out = []
        while start > ts - size:
            out.append(start)
            start -= slide
        return out


ROWS = (
    Row("tumbling", "tumbling 1 s, count", "window_tumbling.py", "tumbling", 1.0, 1.0),
    Row("sliding", "sliding 10 s every 1 s, count + mean", "window_sliding.py", "sliding", 10, 1),
)


def command(
    row: Row, bootstrap: str, group: str, port: int, state_dir: Path, args: argparse.Namespace
) -> list[str]:
    return [
        sys.executable, "-m", "weir.service.cli", "run", str(JOBS / row.job),
        "--bootstrap", bootstrap, "--group", group, "--worker-id", "bench",
        "--slots", str(args.slots), "--guarantee", "exactly-once",
        "--checkpoint-interval-ms", str(args.checkpoint_interval_ms),
        "--http-port", str(port), "--state-dir", str(state_dir), "--log-level", "warning",
    ]  # fmt: skip


def job_env(row: Row, src: str, dst: str) -> dict[str, str]:
    return {
        "BENCH_IN": src,
        "BENCH_OUT": dst,
        "BENCH_WINDOW_S": str(row.size_s),
        "BENCH_SLIDE_S": str(row.slide_s),
        "BENCH_OOO_S": str(row.ooo_s),
        "BENCH_KEY_BY": "tag" if row.key_by_fn else "",
        "BENCH_IDLE_S": "" if row.idle_s is None else str(row.idle_s),
    }


def weir_topics(row: Row, group: str) -> list[str]:
    """The topics Weir created for a run (deleted after it)."""
    topics = [f"{group}.{row.operator}.changelog", f"{group}.dlq"]
    return [*topics, f"{group}.by-tag.repartition"] if row.key_by_fn else topics


# -- data --------------------------------------------------------------------------
def make_timed_records(
    n: int, keys: int, span_s: float, seed: int = 42
) -> list[tuple[bytes, bytes, int, float]]:
    """(key, value, ts, v): event times evenly spread over ``span_s`` from BASE_MS."""
    rng = random.Random(seed)
    dumps = orjson.dumps
    step = span_s * 1000 / n
    out = []
    for i in range(n):
        tag = f"k{i % keys}"
        ts = BASE_MS + int(i * step)
        v = rng.random() * 100.0
        value = dumps({"id": i, "v": v, "tag": tag, "ts": ts})
        out.append((tag.encode(), memoryview(value).tobytes(), ts, v))  # see make_records
    return out


def expected_windows(
    row: Row, records: list[tuple[bytes, bytes, int, float]]
) -> dict[tuple[str, int], list[float]]:
    """(key, window start) -> [count, sum of v] for every window of the input."""
    out: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0, 0.0])
    for key, _, ts, v in records:
        k = key.decode()
        for start in row.windows_of(ts):
            acc = out[(k, start)]
            acc[0] += 1
            acc[1] += v
    return dict(out)


def produce_flush(bootstrap: str, topic: str, partitions: int, ts: int, tags: int = 1) -> None:
    """Records at event time ``ts`` that move the watermark past every window: one per
    partition, or with ``tags`` > 1 as many per partition, each with its own flush tag
    (``~flush``, ``~flush1``, ...), so that every partition of a repartition topic gets
    one too (a watermark taken from the records themselves needs that)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for p in range(partitions):
        for i in range(tags):
            tag = FLUSH_KEY.decode() + (str(i) if i else "")
            value = orjson.dumps({"id": -1, "v": 0.0, "tag": tag, "ts": ts})
            producer.produce(topic, value, tag.encode(), partition=p)
    if producer.flush(30):
        raise BenchmarkError("flush records not delivered")


def scan_windows(
    bootstrap: str, topic: str, partitions: int, timeout: float
) -> tuple[int, dict[tuple[str, int], list[dict]]]:
    """Every result in the output (read_committed): (records, by (key, window start))."""
    out: dict[tuple[str, int], list[dict]] = defaultdict(list)
    loads = orjson.loads

    def note(m: Message) -> None:
        r = loads(m.value())
        out[(r["key"], r["window_start"])].append(r)

    return read_topic(bootstrap, topic, partitions, note, timeout), out


def check_windows(
    row: Row,
    expected: dict[tuple[str, int], list[float]],
    got: dict[tuple[str, int], list[dict]],
) -> list[str]:
    """Problems with the results: missing, duplicated, wrong count or mean, extra."""
    problems = []
    size_ms = round(row.size_s * 1000)
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected and not k[0].startswith(FLUSH_KEY.decode())]
    dups = [k for k, rs in got.items() if len(rs) > 1]
    wrong = 0
    for k, (count, total) in expected.items():
        rs = got.get(k)
        if not rs:
            continue
        r = rs[0]
        if (
            r["count"] != count
            or r["window_end"] != k[1] + size_ms
            or ("mean" in r and abs(r["mean"] - total / count) > 1e-6 * max(1.0, abs(r["mean"])))
        ):
            wrong += 1
    for what, items in (("missing", missing), ("unexpected", extra), ("duplicated", dups)):
        if items:
            problems.append(f"{len(items)} {what} results (e.g. {items[0]})")
    if wrong:
        problems.append(f"{wrong} results with a wrong count, end or mean")
    return problems


def checkpoint_mean(metrics: dict) -> float | None:
    n = metric_sum(metrics, "weir_checkpoint_duration_seconds_count")
    return metric_sum(metrics, "weir_checkpoint_duration_seconds_sum") / n if n else None


# -- part 1: throughput ---------------------------------------------------------------------
def run_throughput(
    row: Row,
    run: int,
    args: argparse.Namespace,
    bootstrap: str,
    probe: OffsetProbe,
    records: list[tuple[bytes, bytes, int, float]],
    expected: dict[tuple[str, int], list[float]],
    broker_pid: int | None,
    profile: bool = False,
    span_s: float | None = None,
) -> dict[str, Any]:
    n = len(records) + args.partitions * row.flush_tags  # the flush records are processed too
    passes = 2 if row.key_by_fn else 1  # through a repartition topic a record passes twice
    span_s = span_s or args.span_s
    admin = admin_client(bootstrap)
    src, dst = unique(f"bench-win-in-{row.name}"), unique(f"bench-win-out-{row.name}")
    group = unique(f"bench-win-{row.name}")
    create_topics(admin, [src], args.partitions)
    create_topics(admin, [dst], args.partitions, {"message.timestamp.type": "LogAppendTime"})
    state_dir = TMP / f"state-{group}"
    child: Child | None = None
    visible: Tail | None = None
    try:
        prefill_s = prefill(bootstrap, src, [(k, v) for k, v, _, _ in records])
        flush_ts = BASE_MS + round((span_s + row.size_s + row.ooo_s + 2) * 1000)

        def flush() -> None:
            produce_flush(bootstrap, src, args.partitions, flush_ts, row.flush_tags)

        if not row.flush_after:
            flush()
        held = len(records) if row.flush_after else n
        if sum(probe.end_offsets(src, args.partitions)) != held:
            raise BenchmarkError(f"input {src} does not hold {held} records after prefill")
        visible = Tail(bootstrap, dst, lambda _at, _m: None)  # counts the results
        visible.start()
        port = free_port()
        child = Child(
            f"windows-{row.name}-run{run}",
            command(row, bootstrap, group, port, state_dir, args),
            env=job_env(row, src, dst),
            http_port=port,
            root=row.root,
        )
        if profile:
            prof = profile_run(child, probe, group, src, n, args, f"windows-{row.name}")
            return {"row": row.name, "profile": prof}
        then = (len(records) * passes, flush) if row.flush_after else None
        progress = watch_processing(child, n * passes, broker_pid, args.timeout, then=then)
        wait_committed(child, probe, group, src, args.partitions, n, args.timeout)
        results = len(expected)
        visible_at = visible.wait_count(results, timeout=30 + 3 * row.size_s)
        metrics = fetch_metrics(port)
        rss = vm_status_mb(child.pid)
        code = child.stop()
        child.check_exit(code)
        count, got = scan_windows(bootstrap, dst, args.partitions, args.timeout)
        problems = check_windows(row, expected, got)
        if problems or visible_at is None:
            raise BenchmarkError(
                f"{child.name}: {'; '.join(problems) or 'results not all visible in time'}"
                f" ({count} results read back, {results} expected)"
            )
        child.discard_log()
        cpu = progress.first.until(progress.done)
        stretch = max(1e-3, progress.t_done - progress.t_first)
        to_visible = max(1e-3, visible_at - progress.t_first)
        return {
            "row": row.name,
            "run": run,
            "records": n,
            "results": count,
            "records_per_s": progress.rate(n * passes) / passes,  # input records
            "processing_s": stretch,
            "end_to_end_records_per_s": (n - progress.p_first / passes) / to_visible,
            "results_per_s": count / to_visible,
            "last_result_after_s": visible_at - progress.t_done,
            **cpu_figures(cpu, round(n - progress.p_first / passes)),
            "peak_rss_mb": progress.peak_rss_mb,
            "rss_mb_at_end": rss.get("VmRSS"),
            "late_records": metric_sum(metrics, "weir_records_late_total"),
            "checkpoint_mean_s": checkpoint_mean(metrics),
            "state_bytes": metric_sum(metrics, "weir_state_bytes"),
            "startup_s": progress.t_first - child.started,
            "prefill_s": prefill_s,
        }
    finally:
        if visible is not None:
            visible.stop()
        if child is not None:
            child.stop(timeout=30)
        delete_topics(admin, [src, dst, *weir_topics(row, group)])
        remove_tree(state_dir)


def summarize(rows: list[Row], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    fields = ("records_per_s", "end_to_end_records_per_s", "results", "results_per_s",
              "last_result_after_s", "cpu_s_per_million", "peak_rss_mb", "checkpoint_mean_s",
              "other_load_cores")  # fmt: skip
    return [summary_of(row, runs, *fields) for row in rows]


# -- part 2: latency ---------------------------------------------------------------------------
def run_latency(
    run: int,
    args: argparse.Namespace,
    bootstrap: str,
    broker_pid: int | None,
    row: Row = ROWS[0],  # a tumbling window
) -> dict[str, Any]:
    size_ms = round(row.size_s * 1000)
    admin = admin_client(bootstrap)
    src, dst, group = unique("bench-lat-in"), unique("bench-lat-out"), unique("bench-lat")
    create_topics(admin, [src, dst], args.partitions)
    state_dir = TMP / f"state-{group}"
    child: Child | None = None
    visible: Tail | None = None
    results: list[tuple[float, dict]] = []  # (received, window result)
    try:
        port = free_port()
        child = Child(
            f"windows-latency-run{run}",
            command(row, bootstrap, group, port, state_dir, args),
            env=job_env(row, src, dst),
            http_port=port,
            root=row.root,
        )
        wait_ready(child, 60)
        visible = Tail(bootstrap, dst, lambda at, m: results.append((at, orjson.loads(m.value()))))
        visible.start()
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 1,
                "acks": "all",
                "partitioner": "murmur2_random",
            }
        )
        keys = [f"k{i}" for i in range(args.latency_keys)]
        rng = random.Random(run)
        last_of_window: dict[int, float] = {}
        last_of_key: dict[tuple[str, int], float] = {}
        counts: Counter[tuple[str, int]] = Counter()
        dumps = orjson.dumps
        rate, duration = args.latency_rate, args.latency_seconds
        before = CpuSnapshot.take(child.pid, broker_pid)
        t0 = time.time()
        sent = 0
        while True:
            now = time.time()
            if now - t0 >= duration:
                break
            due = int((now - t0) * rate)
            while sent < due:
                now = time.time()
                ts = int(now * 1000)
                key = keys[sent % len(keys)]
                value = dumps({"id": sent, "v": rng.random() * 100, "tag": key, "ts": ts})
                try:
                    producer.produce(src, value, key.encode())
                except BufferError:
                    producer.poll(0.01)
                    continue
                ws = ts - ts % size_ms
                last_of_window[ws] = now
                last_of_key[(key, ws)] = now
                counts[(key, ws)] += 1
                sent += 1
            producer.poll(0)
            time.sleep(0.001)
        t_stop = time.time()
        producer.flush(10)
        after = CpuSnapshot.take(child.pid, broker_pid)
        warm_ms = (t0 + args.latency_warmup_s) * 1000
        measured = {
            ws for ws in last_of_window if ws >= warm_ms and ws + size_ms <= t_stop * 1000 - 50
        }
        wanted = {k for k in counts if k[1] in measured}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            seen = {(r["key"], r["window_start"]) for _, r in list(results)}
            if wanted <= seen:
                break
            time.sleep(0.2)
        metrics = fetch_metrics(port)
        code = child.stop()
        visible.stop()
        child.check_exit(code)
        if visible.error:
            raise BenchmarkError(f"read_committed consumer failed: {visible.error}")
        by_window: list[float] = []
        by_key: list[float] = []
        from_end: list[float] = []
        got: Counter[tuple[str, int]] = Counter()
        wrong = 0
        for at, r in results:
            k = (r["key"], r["window_start"])
            got[k] += 1
            if k not in wanted or got[k] > 1:
                continue
            if r["count"] != counts[k]:
                wrong += 1
            by_window.append(at - last_of_window[k[1]])
            by_key.append(at - last_of_key[k])
            from_end.append(at - (k[1] + size_ms) / 1000)
        missing = len(wanted - set(got))
        dups = sum(1 for c in got.values() if c > 1)
        if missing or dups or wrong:
            raise BenchmarkError(
                f"{child.name}: {missing} results missing, {dups} duplicated,"
                f" {wrong} with a wrong count (of {len(wanted)})"
            )
        child.discard_log()
        cpu = before.until(after)

        def stats(xs: list[float]) -> dict[str, float]:
            return {
                "p50": percentile(xs, 50),
                "p90": percentile(xs, 90),
                "p99": percentile(xs, 99),
                "max": max(xs) if xs else float("nan"),
                "n": len(xs),
            }

        return {
            "run": run,
            "produced": sent,
            "rate": sent / (t_stop - t0),
            "windows": len(measured),
            "results": len(by_window),
            "latency_s": stats(by_window),  # the definition reported
            "latency_from_key_last_s": stats(by_key),
            "latency_from_window_end_s": stats(from_end),
            "metric_e2e_p50_s": histogram_quantile(metrics, "weir_end_to_end_latency_seconds", 0.5),
            "metric_e2e_p99_s": histogram_quantile(
                metrics, "weir_end_to_end_latency_seconds", 0.99
            ),
            "checkpoint_mean_s": checkpoint_mean(metrics),
            "worker_cores": cpu["child"] / max(cpu["wall"], 1e-3),
            "other_load_cores": cpu["other_cores"],
            "late_records": metric_sum(metrics, "weir_records_late_total"),
            "samples": [round(x, 4) for x in by_window],
        }
    finally:
        if visible is not None and visible.is_alive():
            visible.stop()
        if child is not None:
            child.stop(timeout=30)
        delete_topics(admin, [src, dst, *weir_topics(row, group)])
        remove_tree(state_dir)


# -- report --------------------------------------------------------------------------------
HEADERS = (
    "window",
    "records/s",
    "records/s end to end",
    "results",
    "last result after s",
    "CPU s / 1M rec",
    "peak RSS MB",
    "mean checkpoint s",
    "other load",
    "runs (records/s)",
)


def table_rows(summary: list[dict[str, Any]]) -> list[list[str]]:
    def cells(s: dict[str, Any]) -> list[str]:
        return [
            s["label"],
            f"{s['records_per_s']:,.0f}",
            f"{s['end_to_end_records_per_s']:,.0f}",
            f"{s['results']:,.0f}",
            f"{s['last_result_after_s']:.1f}",
            f"{s['cpu_s_per_million']:.1f}",
            f"{s['peak_rss_mb']:.0f}",
            f"{s['checkpoint_mean_s']:.3f}",
            f"{s['other_load_cores']:.2f}",
            ", ".join(f"{v:,}" for v in s["records_per_s_all"]),
        ]

    return result_rows(summary, HEADERS, cells, lambda s: s["label"])


LAT_HEADERS = (
    "run",
    "records/s in",
    "results",
    "p50 s",
    "p90 s",
    "p99 s",
    "max s",
    "p50 / p99 from key's last record s",
    "weir_end_to_end p50 / p99 s",
    "mean checkpoint s",
    "worker cores",
    "other load",
)


def latency_rows(lat: list[dict[str, Any]]) -> list[list[str]]:
    def cells(r: dict[str, Any]) -> list[str]:
        s, k = r["latency_s"], r["latency_from_key_last_s"]
        m50, m99 = r["metric_e2e_p50_s"], r["metric_e2e_p99_s"]
        return [
            str(r["run"]),
            f"{r['rate']:,.0f}",
            f"{r['results']:,}",
            f"{s['p50']:.3f}",
            f"{s['p90']:.3f}",
            f"{s['p99']:.3f}",
            f"{s['max']:.3f}",
            f"{k['p50']:.3f} / {k['p99']:.3f}",
            "-" if m50 is None else f"{m50:.2f} / {m99:.2f}",
            f"{r['checkpoint_mean_s'] or float('nan'):.3f}",
            f"{r['worker_cores']:.2f}",
            f"{r['other_load_cores']:.2f}",
        ]

    return result_rows(lat, LAT_HEADERS, cells, lambda r: str(r["run"]))


def markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    code = result["code"]
    lines = [
        "# Event time: window throughput and latency",
        "",
        machine_header(result["machine"]),
        "",
        f"Code: commit {code['commit']} ({code['subject']})"
        f"{', Weir packages modified' if code['weir_dirty'] else ''}.",
        "",
        f"Command: `{result['command']}`. Load average at start: {result['loadavg_start']:.1f}"
        " (other processes on this shared 2-core machine; see the *other load* columns).",
        "",
    ]
    summary = result.get("summary")
    if summary:
        lines += [
            "## Throughput (exactly-once)",
            "",
            f"{args.records:,} pre-filled records over {args.keys:,} keys, event times spread"
            f" evenly over {args.span_s:g} s ({args.records / args.span_s:,.0f} records per"
            f" event-time second), {args.partitions} partitions, {args.slots} slot(s),"
            f" exactly-once with {args.checkpoint_interval_ms} ms checkpoints; median of"
            f" {args.runs} runs (rows interleaved). Every result was read back and checked"
            " (counts, means, no duplicates, none missing).",
            "",
            format_table(HEADERS, table_rows(summary), markdown=True),
            "",
            "records/s: the processing rate — records the slots processed (`/status`, polled"
            " every 0.1 s) from the first poll that saw any to the moment all were processed."
            " *records/s end to end*: the same records over the time from that first poll"
            " until the last window result was readable by a read_committed consumer"
            " (includes firing the last windows and the last commit). *Last result after*:"
            " from the last record processed to the last result visible. CPU: the worker's"
            " user+system seconds (all threads) over the processing stretch, per million"
            " records. Other load: CPU cores used meanwhile by processes other than the"
            " worker, the broker and this script.",
            "",
        ]
    lines += latency_section(
        result,
        args,
        "## Latency: record produced → window result readable (read_committed)",
        "Tumbling 1 s windows (count)",
        "Latency of a window result = (wall time the result was received by a"
        " read_committed consumer in the benchmark process) - (production wall time"
        " of the window's last record, over all keys). With event time = production"
        " time this is, within a few ms, the time from the window's end on the wall"
        " clock to its result being visible: the watermark passing the window end"
        " (the next records, plus Weir's 100 ms watermark tick), firing, and waiting"
        " for the checkpoint that commits the result (up to one interval plus the"
        " commit). *From key's last record*: the same from the last record of that"
        " key in the window (larger by the gap to the window end)."
        " `weir_end_to_end_latency_seconds` is Weir's own histogram (source record"
        " timestamp → commit of its checkpoint), estimated from its buckets. Worker"
        " cores: the worker's CPU use while producing (sub-saturation check). All"
        " results of one window become visible with the same commit, so a run's"
        " distribution is in effect over its ~26 windows (its p99 is about its"
        " slowest window); hence the pooled figure.",
    )
    for name, prof in (result.get("profiles") or {}).items():
        if prof:
            lines += [f"## Profile: {name}", "", *profile_md(prof)]
    return "\n".join(lines) + "\n"


def latency_section(
    result: dict[str, Any], args: argparse.Namespace, heading: str, windows: str, note: str
) -> list[str]:
    """The report's latency section: the setup, a row per run, the medians over the runs
    that passed and the pooled percentiles, then ``note``; nothing without latency runs."""
    lat = result.get("latency")
    if not lat:
        return []
    lines = [
        heading,
        "",
        f"{windows}, {args.latency_rate:,} records/s for {args.latency_seconds:g} s over"
        f" {args.latency_keys} keys, event time = production wall-clock time, no"
        " out-of-orderness allowance, exactly-once with"
        f" {args.checkpoint_interval_ms} ms checkpoints; windows of the first"
        f" {args.latency_warmup_s:g} s and the last partial one left out.",
        "",
        format_table(LAT_HEADERS, latency_rows(lat), markdown=True),
        "",
    ]
    ok = [r for r in lat if "error" not in r]
    if ok:
        p50 = median([r["latency_s"]["p50"] for r in ok])
        p99 = median([r["latency_s"]["p99"] for r in ok])
        pooled = result["latency_pooled"]
        lines += [
            f"**Latency p50 {p50:.3f} s, p99 {p99:.3f} s** (median over {len(ok)} runs;"
            f" all runs' results pooled: p50 {pooled['p50']:.3f} s, p99"
            f" {pooled['p99']:.3f} s, n = {pooled['n']:,}).",
            "",
            note,
            "",
        ]
    return lines


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=200_000, help="records per throughput run")
    p.add_argument("--keys", type=int, default=1_000)
    p.add_argument("--span-s", type=float, default=100.0, help="event-time span of the input")
    row_arguments(p, ROWS)
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--checkpoint-interval-ms", type=int, default=1000)
    p.add_argument("--latency-rate", type=int, default=2000, help="records/s produced")
    p.add_argument("--latency-seconds", type=float, default=30.0)
    p.add_argument("--latency-keys", type=int, default=100)
    p.add_argument("--latency-warmup-s", type=float, default=3.0)
    p.add_argument("--latency-runs", type=int, default=3)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy runs")
    p.add_argument("--profile-seconds", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=0.0, help="per run; default 60 s + N/2000")
    args = p.parse_args(argv)
    select_rows(p, args, ROWS)
    args.timeout = args.timeout or 60 + args.records / 2000
    return args


def describe(r: dict[str, Any]) -> str:
    """One throughput run's figures, for the progress lines."""
    return run_figures(
        r,
        f"{r['end_to_end_records_per_s']:,.0f} records/s end to end",
        f"{r['results']:,} results",
        f"checkpoint {r['checkpoint_mean_s'] or float('nan'):.3f} s",
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    started = time.monotonic()
    broker, result = open_run(MODULE, args)
    result["profiles"] = {}
    probe = OffsetProbe(broker.bootstrap)
    ok = True
    try:
        if not args.skip_throughput:
            print(f"generating {args.records:,} records over {args.keys:,} keys…", flush=True)
            records = make_timed_records(args.records, args.keys, args.span_s)
            expected = {row.name: expected_windows(row, records) for row in args.selected}

            def measure(row: Row, run: int) -> dict[str, Any]:
                want = expected[row.name]
                return run_throughput(
                    row, run, args, broker.bootstrap, probe, records, want, broker.pid
                )

            runs = run_rows(args.selected, args.runs, measure, describe)
            summary = summarize(args.selected, runs)
            ok = ok and all(s["runs"] for s in summary)
            result["summary"], result["runs"] = summary, runs
            print()
            print(format_table(HEADERS, table_rows(summary), markdown=False))
            if not args.no_profile:
                for row in args.selected:
                    # long enough for two profiles at the rate just measured
                    rate = next(x["records_per_s"] for x in summary if x["row"] == row.name)
                    want = (2 * args.profile_seconds + 10) * (rate if rate == rate else 10_000)
                    n_prof = min(5 * len(records), max(len(records), int(want)))
                    span = args.span_s * n_prof / len(records)
                    print(
                        f"profiling {row.label} (unmeasured run, {n_prof:,} records)…", flush=True
                    )
                    prof_records = make_timed_records(n_prof, args.keys, span, seed=9)
                    try:
                        r = run_throughput(
                            row, 0, args, broker.bootstrap, probe, prof_records, {},
                            broker.pid, profile=True, span_s=span,
                        )  # fmt: skip
                        result["profiles"][f"{row.label}, exactly-once"] = r["profile"]
                    except BenchmarkError as exc:
                        print(f"profile run FAILED: {exc}", flush=True)
                    del prof_records
            del records, expected
        if not args.skip_latency:
            lat: list[dict[str, Any]] = []
            for run in range(1, args.latency_runs + 1):
                print(
                    f"latency run {run}/{args.latency_runs} ({args.latency_rate}/s for"
                    f" {args.latency_seconds:g} s): ",
                    end="",
                    flush=True,
                )
                try:
                    r = run_latency(run, args, broker.bootstrap, broker.pid)
                except BenchmarkError as exc:
                    print(f"FAILED: {exc}", flush=True)
                    lat.append({"run": run, "error": str(exc)})
                    continue
                lat.append(r)
                s = r["latency_s"]
                print(
                    f"{r['results']:,} results, p50 {s['p50']:.3f} s, p99 {s['p99']:.3f} s,"
                    f" max {s['max']:.3f} s; worker {r['worker_cores']:.2f} cores, other load"
                    f" {r['other_load_cores']:.2f}",
                    flush=True,
                )
            result["latency"] = lat
            good = [r for r in lat if "error" not in r]
            ok = ok and bool(good)
            if good:
                result["latency_pooled"] = pooled_stats(good)
                print()
                print(format_table(LAT_HEADERS, latency_rows(lat), markdown=False))
                print(
                    f"\nlatency (median of runs): p50"
                    f" {median([r['latency_s']['p50'] for r in good]):.3f} s, p99"
                    f" {median([r['latency_s']['p99'] for r in good]):.3f} s"
                )
    finally:
        probe.close()
        broker.stop()
    close_report(result, started, None if args.no_write else RESULTS / "windows", markdown, args)
    return 0 if ok else 1


def pooled_stats(runs: list[dict[str, Any]]) -> dict[str, float]:
    samples = [x for r in runs for x in r.get("samples", [])]
    return {
        "p50": percentile(samples, 50),
        "p99": percentile(samples, 99),
        "n": len(samples),
    }


if __name__ == "__main__":
    sys.exit(main())
