"""Slot scaling on I/O-bound work: 1, 2, 4 and 8 slots over 1, 4 and 8 partitions.

The question is whether slots speed up a function that waits with the GIL
released (a call to another service) as far as the keys allow, in every layout:
partitions < slots (records routed to slots by key group) and partitions >=
slots (partitions pinned to slots). The job (`jobs/io_map.py`) by default keys
each record by ``id % keys`` — not its Kafka key, so records cross between slots
through the hash exchange — and maps it with a 2 ms ``time.sleep``,
at-least-once, 1 s checkpoints; ``--job plain`` runs the map alone, so records
stay in the slot their partition or Kafka key gives.

For each layout the one-slot rate is measured, and every slot count is compared
with its *ideal*: the one-slot rate times the parallelism the keys and
partitions allow, i.e. the records of the run divided by the records of its
busiest slot (`ideal_parallelism`; with near-uniform keys a little under the
slot count). Efficiency = speed-up ÷ ideal.

Each run: fresh topics, the input (``{"id", "v", "tag"}``, keyed by one of 1000
tags so partitions are nearly even) pre-filled before the worker starts,
``seconds`` of ideal work per slot (the record count grows with the slots), a
fresh group. Rate = records ÷ (last - first output record's broker append
time). Rows interleave within a repeat; medians over repeats.

Run from the repository root::

    .venv/bin/python -m benchmarks.slot_scaling            # ~10 min on 2 cores

Results go to ``benchmarks/results/slot_scaling.{json,md}`` (``slot_scaling_plain``
for the plain job).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
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
    check_load,
    command_line,
    cpu_figures,
    create_topics,
    delete_topics,
    format_table,
    machine_header,
    machine_info,
    make_records,
    median,
    prefill,
    run_rows,
    scan_output,
    start_broker,
    unique,
    wait_for_output,
    write_report,
)
from tests.ports import free_port
from weir.operators.formats import encode_key
from weir.service.partitioner import partition_for
from weir.service.router import PINNED, SlotRouter
from weir.state.keygroups import DEFAULT_MAX_KEY_GROUPS, key_group, slot_table

MODULE = "benchmarks.slot_scaling"
JOB = Path(__file__).resolve().parent / "jobs" / "io_map.py"
JOBS = ("keyed", "plain")  # key_by(id % keys) before the map, or the map alone
TAGS = 1000  # Kafka keys of the input: partitions nearly even
SLOTS = (1, 2, 4, 8)
PARTITIONS = (1, 4, 8)
TARGET = 0.85  # of the ideal, everywhere


@dataclass(frozen=True)
class Row:
    """One layout: ``slots`` slots reading ``partitions`` partitions."""

    slots: int
    partitions: int

    @property
    def name(self) -> str:
        return f"s{self.slots}-p{self.partitions}"

    @property
    def label(self) -> str:
        return f"{self.slots} slot(s), {self.partitions} partition(s)"


def ideal_parallelism(job: str, n: int, keys: int, slots: int, partitions: int) -> float:
    """How many slots' worth of work the run's records spread over: records ÷ records
    of the busiest slot (the ideal speed-up over one slot). The keyed job maps each
    record in the slot owning its key's key group (after the exchange); the plain job
    where its partition is pinned, or, with fewer partitions than slots, in the slot
    owning its Kafka key's key group (`service.router`)."""
    table = slot_table(slots, DEFAULT_MAX_KEY_GROUPS)
    router = SlotRouter(slots, DEFAULT_MAX_KEY_GROUPS)
    mode, pins = router.plan([("in", p) for p in range(partitions)])
    load: Counter[int] = Counter()
    for i in range(n):
        if job == "keyed":
            key = encode_key(i % keys)
        else:
            key = f"k{i % TAGS}".encode()
            if mode == PINNED:
                load[pins[("in", partition_for(key, partitions))]] += 1
                continue
        load[table[key_group(key, DEFAULT_MAX_KEY_GROUPS)]] += 1
    return n / max(load.values())


def run_once(
    row: Row, run: int, args: argparse.Namespace, bootstrap: str, probe: OffsetProbe
) -> dict[str, Any]:
    """One measured run of one layout on fresh topics; raises BenchmarkError on failure."""
    n = round(args.seconds * row.slots / (args.wait_ms / 1000))
    records = make_records(n, tags=TAGS)
    admin = admin_client(bootstrap)
    src, dst, group = unique("scale-in"), unique("scale-out"), unique(f"scale-{row.name}")
    create_topics(admin, [src], row.partitions)
    create_topics(admin, [dst], row.partitions, {"message.timestamp.type": "LogAppendTime"})
    child: Child | None = None
    try:
        prefill(bootstrap, src, records)
        port = free_port()
        cmd = [
            sys.executable, "-m", "weir.service.cli", "run", str(JOB.relative_to(ROOT)),
            "--bootstrap", bootstrap, "--group", group, "--worker-id", "bench",
            "--slots", str(row.slots), "--guarantee", "at-least-once",
            "--checkpoint-interval-ms", "1000", "--http-port", str(port),
            "--state-dir", str(TMP / "state"), "--log-level", "info",
        ]  # fmt: skip
        keys = args.keys if args.job == "keyed" else 0  # 0: the map alone
        env = {"BENCH_IN": src, "BENCH_OUT": dst, "BENCH_KEYS": str(keys),
               "BENCH_WAIT_MS": str(args.wait_ms)}  # fmt: skip
        child = Child(f"scale-{row.name}-run{run}", cmd, env=env, http_port=port)
        progress = wait_for_output(
            child, probe, output=dst, partitions=row.partitions, expected=n,
            timeout=60 + 4 * args.seconds * row.slots,
        )  # fmt: skip
        status = child.status() or {}
        child.check_exit(child.stop())
        scan = scan_output(bootstrap, dst, row.partitions)
        if scan.distinct_ids != n or scan.bad:
            raise BenchmarkError(
                f"{child.name}: output has {scan.distinct_ids}/{n} ids, {scan.bad} unmapped"
            )
        child.discard_log()
        checkpoints = [c for c in status.get("checkpoints", []) if c["status"] == "completed"]
        return {
            "row": row.name,
            "run": run,
            "slots": row.slots,
            "partitions": row.partitions,
            "records": n,
            "records_per_s": n / scan.appended.seconds,
            "ideal": ideal_parallelism(args.job, n, args.keys, row.slots, row.partitions),
            "alignment_s": median([c["alignment_s"] for c in checkpoints]),
            "checkpoint_s": median([c["duration_s"] for c in checkpoints]),
            **cpu_figures(progress.first.until(progress.done), n),
        }
    finally:
        if child is not None:
            child.stop(timeout=30)
        delete_topics(admin, [src, dst])


def summarize(rows: list[Row], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per layout: median rate, speed-up over the layout's one-slot median, the ideal
    (`ideal_parallelism`) and the efficiency against it."""
    out = []
    for row in rows:
        ok = [r for r in runs if r["row"] == row.name and "error" not in r]
        out.append(
            {
                "row": row.name,
                "label": row.label,
                "slots": row.slots,
                "partitions": row.partitions,
                "runs": len(ok),
                "failed": [r["error"] for r in runs if r["row"] == row.name and "error" in r],
                "records_per_s": median([r["records_per_s"] for r in ok]),
                "records_per_s_all": [round(r["records_per_s"]) for r in ok],
                "ideal": median([r["ideal"] for r in ok]),
                "alignment_s": median([r["alignment_s"] for r in ok]),
                "other_load_cores": median([r["other_load_cores"] for r in ok]),
            }
        )
    for s in out:
        one = next((x for x in out if x["partitions"] == s["partitions"] and x["slots"] == 1), None)
        if one is None or not one["runs"] or not s["runs"]:
            s["speedup"] = s["efficiency"] = None
            continue
        s["speedup"] = s["records_per_s"] / one["records_per_s"]
        s["efficiency"] = s["speedup"] / s["ideal"]
    return out


HEADERS = (
    "partitions",
    "slots",
    "records/s",
    "speed-up",
    "ideal",
    "of ideal",
    "alignment s",
    "other load",
    "runs (records/s)",
)


def table_rows(summary: list[dict[str, Any]]) -> list[list[str]]:
    def fmt(x: float | None, spec: str) -> str:
        return "-" if x is None or x != x else format(x, spec)

    rows = []
    for s in summary:
        if not s["runs"]:
            rows.append([str(s["partitions"]), str(s["slots"]), "failed", *["-"] * 6])
            continue
        rows.append(
            [
                str(s["partitions"]),
                str(s["slots"]),
                f"{s['records_per_s']:,.0f}",
                fmt(s["speedup"], ".2f") + "x",
                fmt(s["ideal"], ".2f") + "x",
                fmt(None if s["efficiency"] is None else 100 * s["efficiency"], ".0f") + "%",
                fmt(s["alignment_s"], ".3f"),
                fmt(s["other_load_cores"], ".2f"),
                ", ".join(f"{v:,}" for v in s["records_per_s_all"]),
            ]
        )
    return rows


def markdown(info: dict[str, Any], args: argparse.Namespace, summary: list[dict[str, Any]]) -> str:
    effs = [s["efficiency"] for s in summary if s.get("efficiency") is not None]
    what = (
        f"`key_by(id % {args.keys})` (records cross slots through the exchange) then a map"
        if args.job == "keyed"
        else "A map alone (records stay in the slot their partition or Kafka key gives)"
    )
    failed = [f"- {s['label']}: {err}" for s in summary for err in s["failed"]]
    lines = [
        f"# Slot scaling on I/O-bound work ({args.job} job)",
        "",
        machine_header(info),
        "",
        f"Command: `{command_line(MODULE)}`",
        "",
        f"{what}, sleeping {args.wait_ms:g} ms per record (GIL released), at-least-once, 1 s"
        f" checkpoints; {args.seconds:g} s of ideal work per slot per run; median of"
        f" {args.runs} runs.",
        "",
        format_table(HEADERS, table_rows(summary), markdown=True),
        "",
        "speed-up: records/s ÷ the same layout's one-slot records/s. ideal: the parallelism"
        " the keys and partitions allow (records ÷ records of the busiest slot). of ideal:"
        " speed-up ÷ ideal"
        f" (target ≥ {TARGET:.0%}). alignment s: median checkpoint alignment. other load: CPU"
        " cores used by processes other than the worker, the broker and this script.",
    ]
    if effs:
        lines += ["", f"Lowest share of the ideal: {min(effs):.0%}."]
    if failed:
        lines += ["", "Failed runs:", "", *failed]
    return "\n".join(lines) + "\n"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="repeats per layout; medians reported")
    p.add_argument("--slots", default=",".join(map(str, SLOTS)), help="comma-separated")
    p.add_argument("--partitions", default=",".join(map(str, PARTITIONS)), help="comma-separated")
    p.add_argument("--seconds", type=float, default=6.0, help="ideal work per slot per run")
    p.add_argument("--wait-ms", type=float, default=2.0, help="the map's sleep per record")
    p.add_argument("--keys", type=int, default=1000, help="distinct keys (id %% keys)")
    p.add_argument(
        "--job",
        choices=JOBS,
        default="keyed",
        help="keyed: key_by(id %% keys) then the map (records cross slots); plain: the map"
        " alone (records stay in the slot their partition or Kafka key gives)",
    )
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    try:
        slots = [int(s) for s in args.slots.split(",")]
        parts = [int(s) for s in args.partitions.split(",")]
    except ValueError:
        p.error("--slots and --partitions take comma-separated integers")
    if 1 not in slots or min(slots + parts) < 1:
        p.error("--slots must include 1 (the baseline); all counts must be positive")
    args.rows = [Row(s, q) for q in parts for s in slots]
    return args


def describe(r: dict[str, Any]) -> str:
    return (
        f"{r['records_per_s']:,.0f} records/s (ideal x{r['ideal']:.2f}),"
        f" alignment {r['alignment_s']:.3f} s, other load {r['other_load_cores']:.2f} cores"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    started = time.monotonic()
    load = check_load()
    broker = start_broker()
    info = machine_info(broker.kafka_version)
    print(f"{machine_header(info)}\nbroker {broker.bootstrap}", flush=True)
    probe = OffsetProbe(broker.bootstrap)
    try:
        runs = run_rows(
            args.rows,
            args.runs,
            lambda row, run: run_once(row, run, args, broker.bootstrap, probe),
            describe,
        )
    finally:
        probe.close()
        broker.stop()
    summary = summarize(args.rows, runs)
    print()
    print(format_table(HEADERS, table_rows(summary), markdown=False))
    elapsed = time.monotonic() - started
    print(f"\n{len(runs)} runs in {elapsed:.0f} s")
    if not args.no_write:
        config = {k: v for k, v in vars(args).items() if k not in ("rows", "no_write")}
        data = {
            "machine": info,
            "command": command_line(MODULE),
            "loadavg_start": load,
            "config": config,
            "summary": summary,
            "runs": runs,
            "elapsed_s": elapsed,
        }
        stem = "slot_scaling" if args.job == "keyed" else f"slot_scaling_{args.job}"
        write_report(RESULTS / stem, data, markdown(info, args, summary))
    return 0 if all(s["runs"] for s in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
