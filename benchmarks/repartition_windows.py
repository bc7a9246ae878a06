"""Event time through a repartition topic: window throughput behind ``key_by(fn)``
against keyed by the record key, what the watermark control records cost, and the
latency of windows on the repartition path.

Part 1 (throughput), as part 1 of `benchmarks.windows`: N pre-filled records
``{"id", "v", "tag", "ts"}`` keyed by tag (default 200k records, 1,000 keys, event
times evenly spread over 100 s, 4 partitions), then one record per partition far in
the future, which moves the watermark past every window; tumbling 1 s windows
counting per tag (`jobs/window_tumbling.py`), exactly-once with 1 s checkpoints, 1
slot. Every result is read back and checked. Rows:

* ``key``: ``key_by()`` — windows keyed by the record key (the tag), no repartition
  topic;
* ``repartition``: ``key_by(lambda r: r["tag"])`` — every record goes through the
  repartition topic ``<group>.by-tag.repartition`` and back, the watermark with it as
  control records (`weir.service.repartition_watermarks`);
* ``repartition-slack``: the same with ``max_out_of_orderness`` covering the whole
  input (100 s), so that no record can be late whatever code runs it and every window
  fires at the end, and 64 flush records per source partition with their own tags
  (before, a repartition partition's watermark came from its own records: every one
  needs a flush record), produced once every record has been processed by both
  stages (before, a flush record read into a repartition partition ahead of a slower
  source partition's records made them late, and the run failed its check); the rate
  includes that wait;
* ``repartition-before`` (with ``--baseline DIR``): ``repartition-slack`` run by
  another checkout of Weir — main before watermarks flowed through repartition
  topics, whose repartition path had no control records. The difference between the
  last two rows is what carrying the watermark costs: announcing at each checkpoint,
  reading the announcements back, the router's check for them, the tables committed
  with the offsets.

Part 2 (latency), as part 2 of `benchmarks.windows` on the ``repartition`` job: a
worker runs it while this script produces R records/s (default 2,000/s for 30 s, 100
keys) with event time = production time; latency = when a window's result became
readable by a read_committed consumer - when the window's last record was produced.
Through a repartition topic the watermark reaches the window one checkpoint after
the records (the upstream announces it when it commits them), and the result is
visible one checkpoint after it fires.

Run from the repository root (the baseline: a checkout of main without them)::

    git worktree add --detach /tmp/weir-before main   # main before this branch
    .venv/bin/python -m benchmarks.repartition_windows --baseline DIR

Results go to ``benchmarks/results/repartition-windows.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS,
    BenchmarkError,
    OffsetProbe,
    baseline_line,
    code_version,
    format_table,
    machine_header,
    open_run,
    row_arguments,
    run_rows,
    select_rows,
)
from benchmarks.stateful_common import close_report
from benchmarks.windows import (
    HEADERS,
    LAT_HEADERS,
    Row,
    describe,
    expected_windows,
    latency_rows,
    latency_section,
    make_timed_records,
    pooled_stats,
    run_latency,
    run_throughput,
    summarize,
    table_rows,
)

MODULE = "benchmarks.repartition_windows"
KEY = Row("key", "tumbling 1 s, keyed by the record key", "window_tumbling.py", "tumbling", 1, 1)
REPARTITION = dataclasses.replace(
    KEY, name="repartition", label="tumbling 1 s, key_by(fn): repartition topic", key_by_fn=True
)
SLACK_S = 110.0  # out-of-orderness covering the input's 100 s and a window
SLACK = dataclasses.replace(
    REPARTITION,
    name="repartition-slack",
    label=f"key_by(fn), out-of-orderness {SLACK_S:g} s",
    ooo_s=SLACK_S,
    flush_tags=64,  # before, every repartition partition needs a flush record of its own
    flush_after=True,  # before, a flush record read ahead of slower partitions made them late
)
BEFORE = dataclasses.replace(
    SLACK,
    name="repartition-before",
    label=f"key_by(fn), out-of-orderness {SLACK_S:g} s, baseline (no control records)",
)
ROWS = (KEY, REPARTITION, SLACK, BEFORE)


def check_baseline(root: Path) -> None:
    """A worker started in the baseline checkout must import its packages, not this
    checkout's (installed in the virtualenv)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import weir.service as s; print(s.__file__)"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    loaded = Path(probe.stdout.strip() or "?")
    if probe.returncode != 0 or root.resolve() not in loaded.resolve().parents:
        raise BenchmarkError(
            f"--baseline {root}: a worker there would import {loaded} ({probe.stderr.strip()})"
        )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=200_000, help="records per throughput run")
    p.add_argument("--keys", type=int, default=1_000)
    p.add_argument("--span-s", type=float, default=100.0, help="event-time span of the input")
    p.add_argument("--baseline", help="a checkout of Weir to compare with (a directory)")
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
    p.add_argument("--timeout", type=float, default=0.0, help="per run; default 60 s + N/2000")
    args = p.parse_args(argv)
    select_rows(p, args, ROWS)
    if args.baseline:
        root = Path(args.baseline).resolve()
        check_baseline(root)
        args.selected = [
            dataclasses.replace(r, root=root) if r is BEFORE else r for r in args.selected
        ]
    elif BEFORE in args.selected:
        args.selected.remove(BEFORE)
        print(f"no --baseline: the {BEFORE.name} row is left out")
    args.timeout = args.timeout or 60 + args.records / 2000
    return args


def overhead(summary: list[dict[str, Any]]) -> dict[str, float] | None:
    """What carrying the watermark costs: the slack row against the baseline's."""
    by = {s["row"]: s for s in summary if s["runs"]}
    now, before = by.get("repartition-slack"), by.get("repartition-before")
    if now is None or before is None:
        return None
    return {
        "records_per_s": 1 - now["records_per_s"] / before["records_per_s"],
        "end_to_end_records_per_s": 1
        - now["end_to_end_records_per_s"] / before["end_to_end_records_per_s"],
        "cpu_s_per_million": now["cpu_s_per_million"] / before["cpu_s_per_million"] - 1,
    }


def markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    code = result["code"]
    lines = [
        "# Event time through a repartition topic: throughput, control-record cost, latency",
        "",
        machine_header(result["machine"]),
        "",
        f"Code: commit {code['commit']} ({code['subject']})"
        f"{', Weir packages modified' if code['weir_dirty'] else ''}."
        + (f" {baseline_line(result.get('baseline_code'))}" if args.baseline else ""),
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
            f" evenly over {args.span_s:g} s, {args.partitions} partitions (the repartition"
            f" topic as many), {args.slots} slot(s), exactly-once with"
            f" {args.checkpoint_interval_ms} ms checkpoints; median of {args.runs} runs (rows"
            " interleaved). Every result was read back and checked (counts, no duplicates,"
            " none missing).",
            "",
            format_table(HEADERS, table_rows(summary), markdown=True),
            "",
            "Columns as in `benchmarks/results/windows.md`.",
            "",
        ]
        cost = result.get("overhead")
        if cost is not None:
            lines += [
                f"**Carrying the watermark through the repartition topic costs"
                f" {cost['records_per_s']:.1%} of the processing rate"
                f" ({cost['end_to_end_records_per_s']:.1%} end to end, CPU per record"
                f" {cost['cpu_s_per_million']:+.1%})**: *{SLACK_S:g} s* against *before*,"
                " the same job and input run by the baseline (target: at most 10%). A"
                " negative figure: no cost measurable above the noise of this machine.",
                "",
            ]
    lines += latency_section(
        result,
        args,
        "## Latency on the repartition path: record produced → window result readable",
        "Tumbling 1 s windows behind `key_by(fn)` (count)",
        "As in `benchmarks/results/windows.md`; on this path a window's records are"
        " committed to the repartition topic at the upstream's checkpoint, with the"
        " announcement of their watermark, and its result at the downstream's next"
        " one: about two checkpoint intervals from the window's end, against one when"
        " keyed by the record key.",
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    started = time.monotonic()
    broker, result = open_run(MODULE, args)
    result["profiles"] = {}
    if args.baseline:
        result["baseline_code"] = code_version(Path(args.baseline).resolve())
    probe = OffsetProbe(broker.bootstrap)
    ok = True
    try:
        if not args.skip_throughput:
            print(f"generating {args.records:,} records over {args.keys:,} keys…", flush=True)
            records = make_timed_records(args.records, args.keys, args.span_s)
            expected = expected_windows(KEY, records)  # every row: tumbling 1 s per tag

            def measure(row: Row, run: int) -> dict[str, Any]:
                bootstrap = broker.bootstrap
                return run_throughput(
                    row, run, args, bootstrap, probe, records, expected, broker.pid
                )

            runs = run_rows(args.selected, args.runs, measure, describe)
            summary = summarize(args.selected, runs)
            ok = ok and all(s["runs"] for s in summary)
            result["summary"], result["runs"] = summary, runs
            result["overhead"] = overhead(summary)
            print()
            print(format_table(HEADERS, table_rows(summary), markdown=False))
            if result["overhead"] is not None:
                print(f"control records cost: {result['overhead']}")
        if not args.skip_latency:
            lat: list[dict[str, Any]] = []
            for run in range(1, args.latency_runs + 1):
                print(f"latency run {run}/{args.latency_runs}: ", end="", flush=True)
                try:
                    r = run_latency(run, args, broker.bootstrap, broker.pid, REPARTITION)
                except BenchmarkError as exc:
                    print(f"FAILED: {exc}", flush=True)
                    lat.append({"run": run, "error": str(exc)})
                    continue
                lat.append(r)
                s = r["latency_s"]
                print(f"p50 {s['p50']:.3f} s, p99 {s['p99']:.3f} s", flush=True)
            result["latency"] = lat
            good = [r for r in lat if "error" not in r]
            ok = ok and bool(good)
            if good:
                result["latency_pooled"] = pooled_stats(good)
                print(format_table(LAT_HEADERS, latency_rows(lat), markdown=False))
    finally:
        probe.close()
        broker.stop()
    stem = None if args.no_write else RESULTS / "repartition-windows"
    close_report(result, started, stem, markdown, args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
