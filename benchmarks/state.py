"""Keyed state: a running count per key, exactly-once at several checkpoint intervals
against at-least-once, then the changelog restore rate and the footprint of 1M keys.

Part 1 (throughput). `jobs/keyed_count.py` (``key_by().aggregate(count="count")``,
one output per input) runs over N pre-filled records spread over K keys
(default 500k records, 100k keys, 4 partitions, 1 slot) with exactly-once at
checkpoint intervals of 100 ms, 1 s and 5 s, and with at-least-once (1 s).
records/s = N / (last - first output record's broker append time), as in
`throughput.py`. Every run's output is read back (read_committed) and checked:
N records for exactly-once, every key's final count equal to its input count.

Part 2 (restore and footprint). A worker builds the state of M distinct keys
(default 1M: M records, one per key, exactly-once, 1 s checkpoints), so the
changelog holds M records. Its RSS and state directory size are taken at the
end. Then, R times, a worker of the same group starts with an *empty* state
directory and restores everything from the changelog; the restore rate is
restored records / restore seconds, from the worker's own log lines ("restored
<topic>[<p>]: N records in X s", one per partition, restored one after the
other) and from ``weir_state_restore_seconds`` / ``weir_restored_records_total``.

Unless --no-profile, one unmeasured run of each part is profiled with py-spy: every active
thread for 10 s, then (if still busy) only the GIL holder for 10 s.

Run from the repository root::

    .venv/bin/python -m benchmarks.state                   # defaults, ~6 minutes on 2 cores
    .venv/bin/python -m benchmarks.state --records 100000 --keys 20000 --restore-keys 200000

Results go to ``benchmarks/results/state.{json,md}``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Message

from benchmarks.common import (
    RESULTS,
    ROOT,
    TMP,
    AppendSpan,
    BenchmarkError,
    Child,
    CpuSnapshot,
    OffsetProbe,
    admin_client,
    check_exactly_once,
    cpu_figures,
    create_topics,
    delete_topics,
    format_table,
    machine_header,
    make_records,
    median,
    open_run,
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
    dir_size,
    fetch_metrics,
    histogram_quantile,
    http_get,
    metric_sum,
    profile_md,
    profile_run,
    profile_worker,
    remove_tree,
    stop_when_processed,
    vm_status_mb,
    wait_ready,
    watch_processing,
)
from tests.ports import free_port

MODULE = "benchmarks.state"
JOB_FILE = Path(__file__).resolve().parent / "jobs" / "keyed_count.py"
OPERATOR = "counts"  # the aggregate's name in the job file
STATE = f"{OPERATOR}.acc"


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    guarantee: str
    interval_ms: int

    @property
    def exactly_once(self) -> bool:
        return self.guarantee == "exactly-once"


ROWS = (
    Row("eos-100ms", "exactly-once, 100 ms checkpoints", "exactly-once", 100),
    Row("eos-1s", "exactly-once, 1 s checkpoints", "exactly-once", 1000),
    Row("eos-5s", "exactly-once, 5 s checkpoints", "exactly-once", 5000),
    Row("alo-1s", "at-least-once, 1 s checkpoints", "at-least-once", 1000),
)


def command(
    bootstrap: str,
    group: str,
    worker_id: str,
    guarantee: str,
    interval_ms: int,
    port: int,
    state_dir: Path,
    slots: int,
    log_level: str = "warning",
) -> list[str]:
    return [
        sys.executable, "-m", "weir.service.cli", "run", str(JOB_FILE.relative_to(ROOT)),
        "--bootstrap", bootstrap, "--group", group, "--worker-id", worker_id,
        "--slots", str(slots), "--guarantee", guarantee,
        "--checkpoint-interval-ms", str(interval_ms), "--http-port", str(port),
        "--state-dir", str(state_dir), "--log-level", log_level,
    ]  # fmt: skip


# -- reading the output back -------------------------------------------------------
@dataclass
class CountScan:
    records: int
    distinct: int  # distinct (key, count) pairs: every input record makes one
    appended: AppendSpan
    final: dict[str, int]  # key -> largest count seen


def scan_counts(bootstrap: str, topic: str, partitions: int, timeout: float) -> CountScan:
    """Read the whole output (read_committed) after the worker stopped."""
    final: dict[str, int] = {}
    pairs: set[tuple[str, int]] = set()
    stamps = AppendSpan()
    loads = orjson.loads

    def note(m: Message) -> None:
        stamps.note(m)
        r = loads(m.value())
        key, count = r["key"], r["count"]
        pairs.add((key, count))
        if count > final.get(key, 0):
            final[key] = count

    records = read_topic(bootstrap, topic, partitions, note, timeout)
    return CountScan(records, len(pairs), stamps, final)


def checkpoint_stats(metrics: dict) -> dict[str, Any]:
    n = metric_sum(metrics, "weir_checkpoint_duration_seconds_count")
    return {
        "completed": metric_sum(metrics, "weir_checkpoints_total", status="completed"),
        "failed": metric_sum(metrics, "weir_checkpoints_total", status="failed"),
        "mean_duration_s": metric_sum(metrics, "weir_checkpoint_duration_seconds_sum") / n
        if n
        else None,
        "p99_duration_s": histogram_quantile(metrics, "weir_checkpoint_duration_seconds", 0.99),
        "state_bytes": metric_sum(metrics, "weir_state_bytes"),
    }


# -- part 1: throughput -------------------------------------------------------------------
def run_throughput(
    row: Row,
    run: int,
    args: argparse.Namespace,
    bootstrap: str,
    probe: OffsetProbe,
    records: list[tuple[bytes, bytes]],
    expected: Counter[bytes],
    broker_pid: int | None,
    profile: bool = False,
) -> dict[str, Any]:
    """One measured run of one row on fresh topics; raises BenchmarkError on failure."""
    copies = args.profile_copies if profile else 1
    n = len(records) * copies
    admin = admin_client(bootstrap)
    src, dst, group = unique("bench-st-in"), unique("bench-st-out"), unique(f"bench-st-{row.name}")
    create_topics(admin, [src], args.partitions)
    create_topics(admin, [dst], args.partitions, {"message.timestamp.type": "LogAppendTime"})
    state_dir = TMP / f"state-{group}"
    child: Child | None = None
    try:
        prefill_s = sum(prefill(bootstrap, src, records) for _ in range(copies))
        if sum(probe.end_offsets(src, args.partitions)) != n:
            raise BenchmarkError(f"input {src} does not hold {n} records after prefill")
        port = free_port()
        child = Child(
            f"state-{row.name}-run{run}",
            command(bootstrap, group, "bench", row.guarantee, row.interval_ms, port, state_dir,
                    args.slots),
            env={"BENCH_IN": src, "BENCH_OUT": dst},
            http_port=port,
        )  # fmt: skip
        if profile:
            prof = profile_run(child, probe, group, src, n, args, f"state-{row.name}")
            return {"row": row.name, "profile": prof}
        progress = watch_processing(child, n, broker_pid, args.timeout)
        metrics = fetch_metrics(port)
        rss = vm_status_mb(child.pid)
        committed_at, exit_code = stop_when_processed(
            child, probe, group, src, args.partitions, n, args.timeout
        )
        child.check_exit(exit_code)
        scan = scan_counts(bootstrap, dst, args.partitions, args.timeout)
        wrong = sum(1 for k, c in expected.items() if scan.final.get(k.decode()) != c)
        if wrong or scan.distinct != n:
            raise BenchmarkError(
                f"{child.name}: {wrong} keys with a wrong final count,"
                f" {scan.distinct}/{n} distinct (key, count) outputs"
            )
        check_exactly_once(child, row.exactly_once, scan.records, n)
        child.discard_log()
        cpu = progress.first.until(progress.done)
        stretch = max(1e-3, progress.t_done - progress.t_first)
        checkpoints = checkpoint_stats(metrics)
        return {
            "row": row.name,
            "run": run,
            "records": n,
            # processing rate: slots' processed records over time (from /status)
            # records / (first poll that saw records processed -> all input committed,
            # the last checkpoint forced by a SIGTERM as soon as all were processed):
            # includes every epoch's state work (serialize, changelog, RocksDB, commit)
            "records_per_s": (n - progress.p_first) / max(1e-3, committed_at - progress.t_first),
            # the slots alone: the last epoch's checkpoint work is not in it
            "processing_records_per_s": progress.rate(n),
            "processing_s": stretch,
            # as throughput.py: records / (last - first output append time); with
            # exactly-once this also includes the wait for the last commit
            "append_span_records_per_s": n / scan.appended.seconds,
            "span_s": scan.appended.seconds,
            **cpu_figures(cpu, n - progress.p_first),
            "peak_rss_mb": progress.peak_rss_mb,
            "rss_mb_at_end": rss.get("VmRSS"),
            # from the last record processed to every input offset committed (for
            # exactly-once: to the last results becoming visible to read_committed)
            "final_checkpoint_s": committed_at - progress.t_done,
            "startup_s": progress.t_first - child.started,
            "duplicates": scan.records - n,
            "checkpoints": checkpoints,
            "checkpoint_mean_s": checkpoints["mean_duration_s"],
            "prefill_s": prefill_s,
        }
    finally:
        if child is not None:
            child.stop(timeout=30)
        delete_topics(admin, [src, dst, f"{group}.{OPERATOR}.changelog", f"{group}.dlq"])
        remove_tree(state_dir)


def summarize(
    rows: tuple[Row, ...] | list[Row], runs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    fields = ("records_per_s", "cpu_s_per_million", "peak_rss_mb", "processing_records_per_s",
              "final_checkpoint_s", "append_span_records_per_s", "checkpoint_mean_s",
              "other_load_cores")  # fmt: skip
    out = [
        {**summary_of(row, runs, *fields), "guarantee": row.guarantee,
         "interval_ms": row.interval_ms}
        for row in rows
    ]  # fmt: skip
    alo = next((s for s in out if s["row"] == "alo-1s" and s["runs"]), None)
    for s in out:
        s["vs_alo"] = s["records_per_s"] / alo["records_per_s"] if alo and s["runs"] else None
    return out


def paired_ratios(runs: list[dict[str, Any]], a: str, b: str) -> list[float]:
    """a/b per repeat: rows interleave, so a repeat's two runs saw similar machine load."""
    by = {(r["row"], r["run"]): r for r in runs if "error" not in r and "run" in r}
    return [
        by[(a, i)]["records_per_s"] / by[(b, i)]["records_per_s"]
        for (row, i) in list(by)
        if row == a and (b, i) in by
    ]


# -- part 2: restore ---------------------------------------------------------------------------
_RESTORED = re.compile(
    r"^(\S+ \S+) .*restored (\S+)\[(\d+)\]: (\d+) records in ([\d.]+)s", re.MULTILINE
)


def parse_restore_log(text: str) -> list[dict[str, Any]]:
    """The worker's "restored <topic>[<p>]: N records in X s" lines."""
    out = []
    for m in _RESTORED.finditer(text):
        stamp = time.mktime(time.strptime(m.group(1).split(",")[0], "%Y-%m-%d %H:%M:%S"))
        millis = int(m.group(1).split(",")[1]) / 1000 if "," in m.group(1) else 0.0
        out.append(
            {
                "topic": m.group(2),
                "partition": int(m.group(3)),
                "records": int(m.group(4)),
                "seconds": float(m.group(5)),
                "logged_at": stamp + millis,
            }
        )
    return out


def build_state(
    args: argparse.Namespace,
    bootstrap: str,
    probe: OffsetProbe,
    broker_pid: int | None,
    topics: list[str],
) -> dict[str, Any]:
    """Process M records with M distinct keys; the changelog then holds M records."""
    n = args.restore_keys
    print(f"generating {n:,} records with distinct keys…", flush=True)
    records = make_records(n, tags=n, seed=7)
    admin = admin_client(bootstrap)
    src, dst, group = unique("bench-rs-in"), unique("bench-rs-out"), unique("bench-rs")
    topics += [src, dst, f"{group}.{OPERATOR}.changelog", f"{group}.dlq"]
    create_topics(admin, [src], args.partitions)
    create_topics(admin, [dst], args.partitions, {"message.timestamp.type": "LogAppendTime"})
    prefill_s = prefill(bootstrap, src, records)
    del records
    state_dir = TMP / f"state-{group}-build"
    port = free_port()
    child = Child(
        "state-build",
        command(bootstrap, group, "build", "exactly-once", 1000, port, state_dir, args.slots),
        env={"BENCH_IN": src, "BENCH_OUT": dst},
        http_port=port,
    )
    try:
        timeout = args.timeout + n / 5000
        progress = watch_processing(child, n, broker_pid, timeout)
        metrics = fetch_metrics(port)
        rss = vm_status_mb(child.pid)
        committed_at, code = stop_when_processed(
            child, probe, group, src, args.partitions, n, timeout
        )
        child.check_exit(code)
        child.discard_log()
    finally:
        child.stop(timeout=30)
    changelog = f"{group}.{OPERATOR}.changelog"
    changelog_end = sum(probe.end_offsets(changelog, args.partitions))
    size = dir_size(state_dir / group / "build")
    cpu = progress.first.until(progress.done)
    remove_tree(state_dir)
    return {
        "group": group,
        "src": src,
        "dst": dst,
        "keys": n,
        "prefill_s": prefill_s,
        "build_s": committed_at - progress.t_first,
        "build_records_per_s": (n - progress.p_first) / max(1e-3, committed_at - progress.t_first),
        "build_processing_records_per_s": progress.rate(n),
        "other_load_cores": cpu["other_cores"],
        "rss_mb": rss.get("VmRSS"),
        "peak_rss_mb": rss.get("VmHWM"),
        "state_dir": size,
        "state_bytes_metric": metric_sum(metrics, "weir_state_bytes"),
        "checkpoints": checkpoint_stats(metrics),
        "changelog_end_offsets": changelog_end,  # records + transaction markers
    }


def run_restore(
    run: int,
    args: argparse.Namespace,
    bootstrap: str,
    built: dict[str, Any],
    broker_pid: int | None,
    profile: str = "",
    profile_s: float = 0.0,
) -> dict[str, Any]:
    """Start a worker of the built group with an empty state dir; time its restore.

    With ``profile`` ("all" or "gil"), py-spy samples the restore for ``profile_s``
    seconds instead (an unmeasured run)."""
    group, n = built["group"], built["keys"]
    worker_id = f"restore{run}"
    state_dir = TMP / f"state-{group}-{worker_id}"
    remove_tree(state_dir)
    port = free_port()
    child = Child(
        f"state-restore-run{run}",
        command(bootstrap, group, worker_id, "exactly-once", 1000, port, state_dir, args.slots,
                log_level="info"),
        env={"BENCH_IN": built["src"], "BENCH_OUT": built["dst"]},
        http_port=port,
    )  # fmt: skip
    before = CpuSnapshot.take(child.pid, broker_pid)
    try:
        prof = None
        if profile:
            # sample once the restore thread has started (or as soon as possible)
            while metric_sum(fetch_metrics(port), "weir_restored_records_total") <= 0:
                if not child.alive() or time.monotonic() - child.started > args.timeout:
                    raise BenchmarkError(f"{child.name}: restore did not start: {child.tail()}")
                time.sleep(0.05)
            prof = profile_worker(child, profile_s, "state-restore", modes=(profile,))
        ready_at = wait_ready(child, args.timeout + n / 10000)
        after = CpuSnapshot.take(child.pid, broker_pid)
        metrics = fetch_metrics(port)
        rss = vm_status_mb(child.pid)
        sample_key = f"k{n // 2}"
        code_q, body = http_get(port, f"/state/{OPERATOR}/{sample_key}")
        code = child.stop()
        child.check_exit(code)
        lines = parse_restore_log(child.log_path.read_text(errors="replace"))
    finally:
        child.stop(timeout=30)
    size = dir_size(state_dir / group / worker_id)
    remove_tree(state_dir)
    if profile:
        child.discard_log()
        return {"profile": prof}
    restored_metric = metric_sum(metrics, "weir_restored_records_total")
    restore_s_metric = metric_sum(metrics, "weir_state_restore_seconds_sum")
    log_records = sum(x["records"] for x in lines)
    if not lines or log_records < n or restored_metric != log_records:
        raise BenchmarkError(
            f"{child.name}: restored {restored_metric:.0f} (metric) / {log_records} (log)"
            f" records, expected {n}"
        )
    # Partitions may restore concurrently (one consumer for all of them): the restore
    # took from the earliest start to the latest end the log lines give.
    span = max(x["logged_at"] for x in lines) - min(x["logged_at"] - x["seconds"] for x in lines)
    count_metric = metric_sum(metrics, "weir_state_restore_seconds_count")
    child.discard_log()
    cpu = before.until(after)
    return {
        "run": run,
        "restored_records": log_records,
        "restore_s": span,  # first partition's start to the last one's end (wall clock)
        "records_per_s": log_records / max(span, 1e-3),
        "partition_s_sum": sum(x["seconds"] for x in lines),
        "partition_s_max": max(x["seconds"] for x in lines),
        "metric_restored_records": restored_metric,
        "metric_restore_s_sum": restore_s_metric,
        "metric_restore_s_mean": restore_s_metric / count_metric if count_metric else None,
        "partitions": lines,
        "ready_after_s": ready_at - child.started,  # process start to /ready
        "worker_cpu_s": cpu["child"],
        "other_load_cores": cpu["other_cores"],
        "rss_mb": rss.get("VmRSS"),
        "peak_rss_mb": rss.get("VmHWM"),
        "state_dir": size,
        "sample_query": {
            "key": sample_key,
            "status": code_q,
            "body": body.decode(errors="replace")[:200],
        },
    }


# -- report ---------------------------------------------------------------------------------
HEADERS = (
    "row",
    "records/s",
    "vs ALO",
    "CPU s / 1M rec",
    "peak RSS MB",
    "mean checkpoint s",
    "records/s (slots only)",
    "final checkpoint s",
    "other load",
    "runs (records/s)",
)


def table_rows(summary: list[dict[str, Any]]) -> list[list[str]]:
    def cells(s: dict[str, Any]) -> list[str]:
        return [
            s["label"],
            f"{s['records_per_s']:,.0f}",
            "-" if s["vs_alo"] is None else f"{s['vs_alo']:.2f}x",
            f"{s['cpu_s_per_million']:.1f}",
            f"{s['peak_rss_mb']:.0f}",
            f"{s['checkpoint_mean_s']:.3f}",
            f"{s['processing_records_per_s']:,.0f}",
            f"{s['final_checkpoint_s']:.2f}",
            f"{s['other_load_cores']:.2f}",
            ", ".join(f"{v:,}" for v in s["records_per_s_all"]),
        ]

    return result_rows(summary, HEADERS, cells, lambda s: s["label"])


RESTORE_HEADERS = (
    "run",
    "restored records",
    "restore s (wall)",
    "records/s",
    "per-partition s (log)",
    "weir_restored_records_total",
    "start → /ready s",
    "worker CPU s",
    "RSS MB after",
    "state dir MB (du)",
    "other load",
)


def restore_rows(restores: list[dict[str, Any]]) -> list[list[str]]:
    def cells(r: dict[str, Any]) -> list[str]:
        return [
            str(r["run"]),
            f"{r['restored_records']:,}",
            f"{r['restore_s']:.2f}",
            f"{r['records_per_s']:,.0f}",
            ", ".join(f"{x['seconds']:.2f}" for x in r["partitions"]),
            f"{r['metric_restored_records']:,.0f}",
            f"{r['ready_after_s']:.1f}",
            f"{r['worker_cpu_s']:.1f}",
            f"{r['rss_mb']:.0f}",
            f"{r['state_dir']['du_bytes'] / 1e6:.0f}",
            f"{r['other_load_cores']:.2f}",
        ]

    return result_rows(restores, RESTORE_HEADERS, cells, lambda r: str(r["run"]))


def markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    info = result["machine"]
    lines = [
        "# Keyed state: running count, checkpoints, restore, footprint",
        "",
        machine_header(info),
        "",
        f"Code: commit {result['code']['commit']} ({result['code']['subject']})"
        f"{', Weir packages modified' if result['code']['weir_dirty'] else ''}.",
        "",
        f"Command: `{result['command']}`. Load average at start: {result['loadavg_start']:.1f}"
        f" (other processes on this shared 2-core machine; see the *other load* columns).",
        "",
    ]
    summary = result.get("summary")
    if summary:
        ratio = result["eos_1s_vs_alo"]
        paired = result["eos_1s_vs_alo_paired"]
        per_repeat = "; per repeat: " + ", ".join(f"{x:.2f}" for x in paired) if paired else ""
        lines += [
            "## Throughput of a keyed running count",
            "",
            f'`key_by().aggregate(count="count")` (`jobs/keyed_count.py`), {args.records:,}'
            f" records over {args.keys:,} keys ({args.records // args.keys} updates per key),"
            f" {args.partitions} partitions pre-filled, {args.slots} slot(s); one output per"
            f" input; median of {args.runs} runs (rows interleaved).",
            "",
            format_table(HEADERS, table_rows(summary), markdown=True),
            "",
            f"**Exactly-once (1 s) / at-least-once: {ratio:.2f}** (ratio of medians; target"
            f" >= 0.8){per_repeat}.",
            "",
            "records/s: records ÷ the time from the first `/status` poll (every 0.1 s)"
            " that saw records processed until the group had committed all input offsets,"
            " where the worker is sent SIGTERM as soon as its slots have processed every"
            " record: a clean stop checkpoints at once, so the last epoch's state work"
            " (serialize, changelog, RocksDB, commit) is included without waiting for the"
            " next interval. Start-up and the group join are excluded. *records/s (slots"
            " only)*: the same up to the moment the slots had processed every record (the"
            " last epoch's checkpoint work excluded). *Final checkpoint*: that last drain"
            " (SIGTERM to everything committed). CPU: the worker's user+system seconds (all"
            " threads) over the slots' processing stretch, per million records. Peak RSS:"
            " VmHWM. Mean checkpoint: `weir_checkpoint_duration_seconds` sum/count (barrier"
            " to commit) before the stop. Other load: CPU cores used meanwhile by processes"
            " other than the worker, the broker and this script. Every run's output was read"
            " back (read_committed) and checked: every key's final count right, one output"
            " per input (exactly N for exactly-once).",
            "",
        ]
    built = result.get("build")
    restores = result.get("restores")
    if built:
        ok = [r for r in restores or [] if "error" not in r]
        lines += [
            f"## Restore and footprint: {built['keys']:,} keys",
            "",
            f"State built by one worker from {built['keys']:,} records with distinct keys"
            f" (exactly-once, 1 s checkpoints): {built['build_records_per_s']:,.0f} records/s"
            f" ({built['build_s']:.1f} s, other load {built['other_load_cores']:.2f}). The"
            f" changelog holds {built['keys']:,} records.",
            "",
            "| footprint of the state | value |",
            "|---|---:|",
            f"| building worker RSS at the end / peak | {built['rss_mb']:.0f} MB /"
            f" {built['peak_rss_mb']:.0f} MB |",
            f"| its state dir (`du`, after a clean stop) |"
            f" {built['state_dir']['du_bytes'] / 1e6:.1f} MB"
            f" ({built['state_dir']['files']} files) |",
            f"| `weir_state_bytes` (RocksDB estimate) |"
            f" {built['state_bytes_metric'] / 1e6:.1f} MB |",
        ]
        if ok:
            lines += [
                f"| restored worker RSS (median) | {median([r['rss_mb'] for r in ok]):.0f} MB |",
                f"| restored state dir (`du`, median) |"
                f" {median([r['state_dir']['du_bytes'] for r in ok]) / 1e6:.1f} MB |",
            ]
        lines += [
            "",
            f"Restore into an empty state dir ({len(ok)} of {len(restores or [])} runs):",
            "",
            format_table(RESTORE_HEADERS, restore_rows(restores or []), markdown=True),
            "",
        ]
        if ok:
            rate = median([r["records_per_s"] for r in ok])
            lines += [
                f"**Restore rate: {rate:,.0f} records/s** (median; target >= 100,000)."
                " Records/s: restored records (the worker's log lines \"restored"
                ' <topic>[<p>]: N records in X s", one per partition, checked against'
                " `weir_restored_records_total`) ÷ the restore's wall time, from the"
                " earliest partition's start (log time - X) to the latest one's end; the"
                " partitions of one worker restore concurrently through one consumer, so"
                " their times overlap (*per-partition s*). Start → /ready: from process"
                " start (interpreter, job load, group join, restore) to `/ready` answering"
                " 200. Worker CPU: the worker's user+system seconds over that time.",
                "",
            ]
    profiles = result.get("profiles") or {}
    for name, prof in profiles.items():
        if not prof:
            continue
        lines += [f"## Profile: {name}", "", *profile_md(prof), ""]
    return "\n".join(lines) + "\n"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=500_000, help="records per throughput run")
    p.add_argument("--keys", type=int, default=100_000, help="distinct keys in those records")
    row_arguments(p, ROWS)
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--restore-keys", type=int, default=1_000_000, help="keys of the restored state")
    p.add_argument("--restore-runs", type=int, default=3)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-restore", action="store_true")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy runs")
    p.add_argument("--profile-seconds", type=float, default=10.0)
    p.add_argument(
        "--profile-copies",
        type=int,
        default=3,
        help="the profiled keyed-count run reads the input this many times (to last long enough)",
    )
    p.add_argument("--timeout", type=float, default=0.0, help="per run; default 60 s + N/5000")
    args = p.parse_args(argv)
    select_rows(p, args, ROWS)
    if min(args.records, args.keys, args.runs, args.partitions, args.restore_keys) < 1:
        p.error("sizes must be positive")
    args.timeout = args.timeout or 60 + args.records / 5000
    return args


def describe(r: dict[str, Any]) -> str:
    """One throughput run's figures, for the progress lines."""
    return run_figures(r, f"checkpoint {r['checkpoint_mean_s'] or float('nan'):.3f} s")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    started = time.monotonic()
    broker, result = open_run(MODULE, args)
    result["profiles"] = {}
    probe = OffsetProbe(broker.bootstrap)
    leftovers: list[str] = []
    ok = True
    try:
        if not args.skip_throughput:
            print(f"generating {args.records:,} records over {args.keys:,} keys…", flush=True)
            records = make_records(args.records, tags=args.keys)
            expected = Counter(k for k, _ in records)
            runs = run_rows(
                args.selected,
                args.runs,
                lambda row, run: run_throughput(
                    row, run, args, broker.bootstrap, probe, records, expected, broker.pid
                ),
                describe,
            )
            summary = summarize(args.selected, runs)
            ok = ok and all(s["runs"] for s in summary)
            eos = next((s for s in summary if s["row"] == "eos-1s"), None)
            alo = next((s for s in summary if s["row"] == "alo-1s"), None)
            result["summary"] = summary
            result["runs"] = runs
            result["eos_1s_vs_alo"] = (
                eos["records_per_s"] / alo["records_per_s"]
                if eos and alo and eos["runs"] and alo["runs"]
                else float("nan")
            )
            result["eos_1s_vs_alo_paired"] = paired_ratios(runs, "eos-1s", "alo-1s")
            print()
            print(format_table(HEADERS, table_rows(summary), markdown=False))
            paired = [round(x, 2) for x in result["eos_1s_vs_alo_paired"]]
            print(f"\nexactly-once (1 s) / at-least-once: {result['eos_1s_vs_alo']:.2f}"
                  f" (per repeat: {paired})")  # fmt: skip
            if not args.no_profile:
                row = next(r for r in ROWS if r.name == "eos-1s")
                print(
                    f"profiling {row.label} (unmeasured run, {args.profile_copies}x records)…",
                    flush=True,
                )
                try:
                    r = run_throughput(row, 0, args, broker.bootstrap, probe, records, expected,
                                       broker.pid, profile=True)  # fmt: skip
                    result["profiles"]["keyed count, exactly-once 1 s"] = r["profile"]
                except BenchmarkError as exc:
                    print(f"profile run FAILED: {exc}", flush=True)
            del records, expected
        if not args.skip_restore:
            print(f"building the state of {args.restore_keys:,} keys…", flush=True)
            built = build_state(args, broker.bootstrap, probe, broker.pid, leftovers)
            result["build"] = built
            print(
                f"built in {built['build_s']:.1f} s ({built['build_records_per_s']:,.0f}"
                f" records/s); RSS {built['rss_mb']:.0f} MB (peak {built['peak_rss_mb']:.0f});"
                f" state dir {built['state_dir']['du_bytes'] / 1e6:.1f} MB (du)",
                flush=True,
            )
            restores: list[dict[str, Any]] = []
            for run in range(1, args.restore_runs + 1):
                print(f"restore {run}/{args.restore_runs}: ", end="", flush=True)
                try:
                    r = run_restore(run, args, broker.bootstrap, built, broker.pid)
                except BenchmarkError as exc:
                    print(f"FAILED: {exc}", flush=True)
                    restores.append({"run": run, "error": str(exc)})
                    continue
                restores.append(r)
                print(
                    f"{r['restored_records']:,} records in {r['restore_s']:.2f} s ="
                    f" {r['records_per_s']:,.0f} records/s (partitions"
                    f" {[x['seconds'] for x in r['partitions']]} s); ready after"
                    f" {r['ready_after_s']:.1f} s;"
                    f" RSS {r['rss_mb']:.0f} MB; state dir"
                    f" {r['state_dir']['du_bytes'] / 1e6:.1f} MB; other load"
                    f" {r['other_load_cores']:.2f}",
                    flush=True,
                )
            result["restores"] = restores
            good = [r for r in restores if "error" not in r]
            ok = ok and bool(good)
            if good:
                print()
                print(format_table(RESTORE_HEADERS, restore_rows(restores), markdown=False))
                print(f"\nrestore rate (median): {median([r['records_per_s'] for r in good]):,.0f}"
                      " records/s")  # fmt: skip
            if not args.no_profile and good:
                # sample only while restoring: about as long as a restore took
                span = median([r["restore_s"] for r in good])
                seconds = max(1, min(int(args.profile_seconds), int(span)))
                prof: dict[str, Any] = {}
                for mode in ("all", "gil"):
                    print(f"profiling a restore ({mode}, {seconds} s; unmeasured run)…", flush=True)
                    try:
                        r = run_restore(0, args, broker.bootstrap, built, broker.pid, mode, seconds)
                        prof.update(r["profile"] or {})
                    except BenchmarkError as exc:
                        print(f"profile run FAILED: {exc}", flush=True)
                result["profiles"]["restore of the changelog"] = prof
    finally:
        if leftovers:
            delete_topics(admin_client(broker.bootstrap), leftovers)
        probe.close()
        broker.stop()
    close_report(result, started, None if args.no_write else RESULTS / "state", markdown, args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
