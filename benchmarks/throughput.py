"""Throughput of a stateless JSON map: Weir against the raw confluent-kafka loop.

The question is how much of one Python process's practical limit Weir keeps.
The limit is `benchmarks/raw_loop.py`: consume batches, ``orjson`` decode, map,
encode, produce, commit about once a second — nothing else. Against the same
broker, with the same input, the script then runs Weir with 1 slot and with 4
slots (at-least-once), and with 1 slot exactly-once (1 s checkpoints).

Each run gets fresh topics pre-filled with the same records before the
processor starts, and a fresh consumer group. Throughput is records divided
by the time between the first and the last output record's broker append
timestamp, so process start-up and the group join are excluded alike for all
rows. CPU is the processor process's user+system time over the same stretch
(from /proc, all threads, librdkafka's included); peak RSS is its VmHWM. The
output is read back after every run to check that no record was lost.

Run from the repository root::

    .venv/bin/python -m benchmarks.throughput            # defaults: 500k records, 3 runs

Results go to ``benchmarks/results/throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS,
    ROOT,
    TMP,
    BenchmarkError,
    Child,
    OffsetProbe,
    admin_client,
    check_exactly_once,
    check_load,
    command_line,
    cpu_figures,
    create_topics,
    delete_topics,
    format_table,
    machine_header,
    machine_info,
    make_records,
    prefill,
    result_rows,
    row_arguments,
    run_figures,
    run_rows,
    scan_output,
    select_rows,
    start_broker,
    summary_of,
    unique,
    wait_for_output,
    write_report,
)
from tests.ports import free_port

MODULE = "benchmarks.throughput"
JOB_FILE = Path(__file__).resolve().parent / "jobs" / "map_json.py"
RAW_LOOP = Path(__file__).resolve().parent / "raw_loop.py"


@dataclass(frozen=True)
class Row:
    """One contender: the raw loop or a Weir configuration."""

    name: str
    label: str
    slots: int = 0  # 0 = the raw loop
    guarantee: str = "at-least-once"

    @property
    def raw(self) -> bool:
        return self.slots == 0

    @property
    def exactly_once(self) -> bool:
        return self.guarantee == "exactly-once"


ROWS = (
    Row("raw", "raw confluent-kafka loop"),
    Row("weir-1", "Weir, 1 slot, at-least-once", 1),
    Row("weir-4", "Weir, 4 slots, at-least-once", 4),
    Row("weir-1-eos", "Weir, 1 slot, exactly-once (1 s checkpoints)", 1, "exactly-once"),
)


def _command(
    row: Row, bootstrap: str, src: str, dst: str, group: str, port: int, kafka: list[str]
) -> list[str]:
    extra = [arg for setting in kafka for arg in ("--kafka", setting)]
    if row.raw:
        return [
            sys.executable, str(RAW_LOOP), "--bootstrap", bootstrap,
            "--input", src, "--output", dst, "--group", group, *extra,
        ]  # fmt: skip
    return [
        sys.executable, "-m", "weir.service.cli", "run", str(JOB_FILE.relative_to(ROOT)),
        "--bootstrap", bootstrap, "--group", group, "--worker-id", "bench",
        "--slots", str(row.slots), "--guarantee", row.guarantee,
        "--checkpoint-interval-ms", "1000", "--http-port", str(port),
        "--state-dir", str(TMP / "state"), "--log-level", "info", *extra,
    ]  # fmt: skip


def run_once(
    row: Row,
    run: int,
    bootstrap: str,
    probe: OffsetProbe,
    records: list[tuple[bytes, bytes]],
    partitions: int,
    timeout: float,
    kafka: list[str],
    broker_pid: int | None,
) -> dict[str, Any]:
    """One measured run of one row on fresh topics; raises BenchmarkError on failure."""
    n = len(records)
    admin = admin_client(bootstrap)
    src, dst, group = (
        unique(f"bench-in-{row.name}"),
        unique(f"bench-out-{row.name}"),
        unique(f"bench-{row.name}"),
    )
    # Broker append time: when each output batch reached the log, set by the broker.
    create_topics(admin, [src], partitions)
    create_topics(admin, [dst], partitions, {"message.timestamp.type": "LogAppendTime"})
    child: Child | None = None
    try:
        prefill_s = prefill(bootstrap, src, records)
        if sum(probe.end_offsets(src, partitions)) != n:
            raise BenchmarkError(f"input {src} does not hold {n} records after prefill")
        port = 0 if row.raw else free_port()
        child = Child(
            f"{row.name}-run{run}",
            _command(row, bootstrap, src, dst, group, port, kafka),
            env={"BENCH_IN": src, "BENCH_OUT": dst},
            http_port=port,
        )
        progress = wait_for_output(
            child,
            probe,
            output=dst,
            partitions=partitions,
            expected=n,
            committed_check=(group, src) if row.exactly_once else None,
            broker_pid=broker_pid,
            timeout=timeout,
        )
        status = child.status()
        exit_code = child.stop()
        child.check_exit(exit_code)
        # VmHWM at completion; not rusage's ru_maxrss, which Linux carries over from
        # the forked pre-exec image, i.e. this script's own (large) footprint.
        peak_rss = progress.peak_rss_mb
        scan = scan_output(bootstrap, dst, partitions)
        if scan.distinct_ids != n or scan.bad:
            raise BenchmarkError(
                f"{child.name}: output has {scan.distinct_ids}/{n} distinct ids,"
                f" {scan.bad} unmapped records"
            )
        check_exactly_once(child, row.exactly_once, scan.records, n)
        child.discard_log()
        cpu = progress.first.until(progress.done)
        slot_records = [s["records"] for s in status["slots"]] if status else None
        return {
            "row": row.name,
            "run": run,
            "records": n,
            "records_per_s": n / scan.appended.seconds,
            "span_s": scan.appended.seconds,
            # CPU from the first output seen to completion seen (CPU per million is None
            # when the whole output appeared at once, tiny N: no stretch to measure).
            **cpu_figures(cpu, n),
            "cpu_s_total": child.rusage.ru_utime + child.rusage.ru_stime
            if child.rusage is not None
            else None,
            "peak_rss_mb": peak_rss,
            "startup_s": progress.first.at - child.started,
            "visible_after_s": progress.done.at - progress.first.at,
            "duplicates": scan.records - n,
            "prefill_s": prefill_s,
            "slot_records": slot_records,
        }
    finally:
        if child is not None:
            child.stop(timeout=30)
        delete_topics(admin, [src, dst])


def summarize(rows: list[Row], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row: medians over its successful runs, and the ratios to the raw loop."""
    fields = ("records_per_s", "cpu_s_per_million", "peak_rss_mb", "startup_s",
              "other_load_cores")  # fmt: skip
    out = [
        {**summary_of(row, runs, *fields), "slots": row.slots, "guarantee": row.guarantee}
        for row in rows
    ]
    raw = next((s for s in out if s["row"] == "raw" and s["runs"]), None)
    for s in out:
        if raw is None or not s["runs"]:
            s["throughput_vs_raw"] = s["cpu_vs_raw"] = s["rss_vs_raw"] = None
            continue
        s["throughput_vs_raw"] = s["records_per_s"] / raw["records_per_s"]
        s["cpu_vs_raw"] = (
            s["cpu_s_per_million"] / raw["cpu_s_per_million"] if raw["cpu_s_per_million"] else None
        )
        s["rss_vs_raw"] = s["peak_rss_mb"] / raw["peak_rss_mb"]
    return out


HEADERS = (
    "row",
    "records/s",
    "vs raw",
    "CPU s / 1M rec",
    "vs raw",
    "peak RSS MB",
    "other load",
    "runs (records/s)",
)


def table_rows(summary: list[dict[str, Any]]) -> list[list[str]]:
    def ratio(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}x"

    def cells(s: dict[str, Any]) -> list[str]:
        return [
            s["label"],
            f"{s['records_per_s']:,.0f}",
            ratio(s["throughput_vs_raw"]),
            f"{s['cpu_s_per_million']:.1f}",
            ratio(s["cpu_vs_raw"]),
            f"{s['peak_rss_mb']:.0f}",
            f"{s['other_load_cores']:.2f}",
            ", ".join(f"{v:,}" for v in s["records_per_s_all"]),
        ]

    return result_rows(summary, HEADERS, cells, lambda s: s["label"])


def markdown(info: dict[str, Any], args: argparse.Namespace, summary: list[dict[str, Any]]) -> str:
    failed = [f"- {s['label']}: {err}" for s in summary for err in s["failed"]]
    lines = [
        "# Throughput: stateless JSON map",
        "",
        machine_header(info),
        "",
        f"Command: `{command_line(MODULE)}`",
        "",
        f"{args.records:,} records ({{id, v, tag}} JSON, ~{args.value_bytes} B, keyed by"
        f" tag) in {args.partitions} partitions; median of {args.runs} runs; broker,"
        " processor and measuring script on the same machine.",
        "",
        format_table(HEADERS, table_rows(summary), markdown=True),
        "",
        "records/s: records ÷ (last - first output record's broker append time)."
        " CPU: the processor process's user+system seconds over the same stretch, all"
        " threads (librdkafka's included). Peak RSS: the process's VmHWM."
        " Other load: CPU cores used meanwhile by processes other than the processor,"
        " the broker and this script (anything above ~0.1 on this machine means the"
        " numbers are disturbed). Ratios are Weir ÷ raw.",
    ]
    loads = [s["other_load_cores"] for s in summary if s["runs"]]
    if loads and max(loads) > 0.1:
        lines += [
            "",
            f"**Disturbed:** other processes used {min(loads):.1f} to {max(loads):.1f} of the"
            f" machine's {info['nproc']} cores during the measurements; absolute rates are"
            " low and noisy, ratios and CPU per record are more trustworthy.",
        ]
    if failed:
        lines += ["", "Failed runs:", "", *failed]
    return "\n".join(lines) + "\n"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=500_000, help="records per run")
    row_arguments(p, ROWS)
    p.add_argument("--timeout", type=float, default=0.0, help="per run; default 60 s + N/5000")
    p.add_argument("--no-warmup", action="store_true", help="skip the unmeasured warm-up run")
    p.add_argument(
        "--raw-kafka",
        action="append",
        default=[],
        metavar="consumer.KEY=VALUE",
        help="extra librdkafka setting for the raw loop (experiments; recorded in the JSON)",
    )
    p.add_argument(
        "--weir-kafka",
        action="append",
        default=[],
        metavar="consumer.KEY=VALUE",
        help="extra `weir run --kafka` setting for the Weir rows (experiments)",
    )
    args = p.parse_args(argv)
    select_rows(p, args, ROWS)
    if args.records < 1 or args.runs < 1 or args.partitions < 1:
        p.error("--records, --runs and --partitions must be positive")
    return args


def describe(r: dict[str, Any]) -> str:
    """One run's figures, for the progress lines."""
    return run_figures(r) + (f", {r['duplicates']} duplicates" if r["duplicates"] else "")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    timeout = args.timeout or 60 + args.records / 5000
    started = time.monotonic()
    print(f"generating {args.records:,} records…", flush=True)
    records = make_records(args.records)
    args.value_bytes = round(sum(len(v) for _, v in records) / len(records))
    check_load()
    broker = start_broker()
    info = machine_info(broker.kafka_version)
    print(f"broker {broker.bootstrap} (Kafka {broker.kafka_version})", flush=True)
    probe = OffsetProbe(broker.bootstrap)
    runs: list[dict[str, Any]] = []
    try:
        if not args.no_warmup:
            # Unmeasured: warms the broker's JIT and page cache, which would otherwise
            # handicap whichever row happens to run first.
            warm = records[: max(1, min(len(records), 200_000))]
            print(f"warm-up ({len(warm):,} records through the raw loop)… ", end="", flush=True)
            try:
                run_once(
                    ROWS[0], 0, broker.bootstrap, probe, warm, args.partitions, timeout,
                    args.raw_kafka, broker.pid,
                )  # fmt: skip
                print("done", flush=True)
            except BenchmarkError as exc:
                print(f"FAILED: {exc}", flush=True)

        def measure(row: Row, run: int) -> dict[str, Any]:
            kafka = args.raw_kafka if row.raw else args.weir_kafka
            return run_once(
                row, run, broker.bootstrap, probe, records, args.partitions, timeout, kafka,
                broker.pid,
            )  # fmt: skip

        runs = run_rows(args.selected, args.runs, measure, describe)
    finally:
        probe.close()
        broker.stop()
    summary = summarize(args.selected, runs)
    print()
    print(format_table(HEADERS, table_rows(summary), markdown=False))
    elapsed = time.monotonic() - started
    print(f"\n{args.records:,} records x {args.runs} runs in {elapsed:.0f} s")
    if not args.no_write:
        config = {
            k: v for k, v in vars(args).items() if k not in ("selected", "no_write", "no_warmup")
        }
        config["rows"] = [r.name for r in args.selected]
        data = {
            "machine": info,
            "command": command_line(MODULE),
            "config": config,
            "summary": summary,
            "runs": runs,
            "elapsed_s": elapsed,
        }
        write_report(RESULTS / "throughput", data, markdown(info, args, summary))
    return 0 if all(s["runs"] for s in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
