"""Before/after: this checkout's Weir against another checkout's, paired on one input.

A refactoring must not cost speed, and on a shared, noisy machine two separate
benchmark sessions cannot show that: the load moves more than the code does. So
both versions run in the same session, on the same pre-filled input, in rounds:

1. Pre-fill ``--events`` Nexmark events once (4 partitions).
2. Each round runs, per query, the baseline and this checkout back to back, in
   alternating order (ABBA: a drift in load hits both sides alike); for q0 the raw
   confluent-kafka loop runs between them as a yardstick.
3. Each run is checked against the batch reference, like every harness run.
4. The report gives, per query, the median of the per-round ratios new/old of
   input events/s and of CPU-seconds per million events (the figure a shared
   machine's load disturbs least), beside each side's medians.

The baseline is any Weir checkout with its own ``.venv`` (for a past commit:
``git worktree add /tmp/weir-old <rev>`` and ``./dev setup`` there)::

    .venv/bin/python -m benchmarks.nexmark.paired --baseline DIR --rounds 6

Results: ``benchmarks/results/nexmark-paired.md`` and ``.json`` (one entry per run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS,
    OffsetProbe,
    admin_client,
    baseline_line,
    code_version,
    create_topics,
    prefill,
    start_broker,
)
from benchmarks.common import unique as unique_name
from benchmarks.nexmark.generator import ORDERED, GeneratorConfig, generate
from benchmarks.nexmark.reference import Reference
from benchmarks.nexmark.run import NTMP, cleanup_topics, throughput_run
from benchmarks.nexmark.spec import QUERIES
from benchmarks.nexmark.systems import BY_NAME, EOS, System


def baseline_system(checkout: Path) -> System:
    """A System running the Weir of ``checkout``: a wrapper enters the checkout (so the
    relative job path resolves there) and runs its venv; ``-m weir.service.cli`` becomes
    the checkout's ``weir`` command, which checkouts from before the runtime moved under
    the ``weir`` package have too."""
    python = checkout / ".venv" / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"--baseline {checkout}: no .venv/bin/python there (run ./dev setup)")
    NTMP.mkdir(parents=True, exist_ok=True)
    wrapper = NTMP / "baseline-python"
    weir = checkout / ".venv" / "bin" / "weir"
    wrapper.write_text(
        f'#!/bin/sh\ncd "{checkout}" || exit 1\n'
        f'if [ "$1" = "-m" ] && [ "$2" = "weir.service.cli" ]; then\n'
        f'  shift 2; exec "{weir}" "$@"\nfi\n'
        f'exec "{python}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return System("weir-old", f"Weir baseline ({checkout.name})", EOS, QUERIES, "weir", wrapper)


def summarize(runs: list[dict[str, Any]], queries: list[str]) -> dict[str, Any]:
    """Per query: each side's medians and the medians of the per-round ratios (step 4)."""
    out: dict[str, Any] = {}
    for query in queries:
        by = {
            (r["side"], r["round"]): r
            for r in runs
            if r["query"] == query and r.get("records_per_s") and r["check"].get("ok")
        }
        rounds = sorted(
            {rnd for side, rnd in by if side == "old"} & {rnd for s, rnd in by if s == "new"}
        )
        ratio = [by["new", r]["records_per_s"] / by["old", r]["records_per_s"] for r in rounds]
        cpu = [
            by["new", r]["cpu_s_per_million"] / by["old", r]["cpu_s_per_million"] for r in rounds
        ]
        sides = {}
        for side in ("old", "new", "raw"):
            mine = [r for (s, _), r in by.items() if s == side]
            if mine:
                sides[side] = {
                    "events_per_s": statistics.median(r["records_per_s"] for r in mine),
                    "cpu_s_per_million": statistics.median(r["cpu_s_per_million"] for r in mine),
                    "runs": len(mine),
                }
        out[query] = {
            "sides": sides,
            "rounds": len(rounds),
            "throughput_new_over_old": statistics.median(ratio) if ratio else None,
            "throughput_ratio_range": [min(ratio), max(ratio)] if ratio else None,
            "cpu_new_over_old": statistics.median(cpu) if cpu else None,
        }
    return out


def report(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# Nexmark before/after (paired rounds on one input)",
        "",
        f"{baseline_line(code_version(args.baseline.resolve()))} Against this checkout;"
        f" {args.events:,} events, "
        f"{args.rounds} rounds, ABBA order; exactly-once, 1 slot.",
        "",
        "| query | old ev/s | new ev/s | raw ev/s | new/old ev/s (range) "
        "| old CPU-s/1M | new CPU-s/1M | new/old CPU |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for query, s in summary.items():
        side = s["sides"]
        ev = {
            n: f"{side[n]['events_per_s']:,.0f}" if n in side else "-"
            for n in ("old", "new", "raw")
        }
        cpu = {
            n: f"{side[n]['cpu_s_per_million']:.2f}" if n in side else "-" for n in ("old", "new")
        }
        lo, hi = s["throughput_ratio_range"] or (0, 0)
        ratio = s["throughput_new_over_old"] or 0
        lines.append(
            f"| {query} | {ev['old']} | {ev['new']} | {ev['raw']} | {ratio:.2f} ({lo:.2f}-{hi:.2f})"
            f" | {cpu['old']} | {cpu['new']} | {s['cpu_new_over_old'] or 0:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a Weir checkout with .venv")
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--queries", default="q0,count")
    parser.add_argument("--out", type=Path, default=RESULTS / "nexmark-paired")
    args = parser.parse_args()
    queries = args.queries.split(",")
    old, new, raw = baseline_system(args.baseline.resolve()), BY_NAME["weir"], BY_NAME["raw"]
    harness = argparse.Namespace(partitions=4, timeout=0.0)
    base = (int(time.time() * 1000) - args.events - 3_600_000) // 60_000 * 60_000
    events = generate(args.events, GeneratorConfig(seed=42, base_time_ms=base, event_rate=1000.0))
    ref = Reference([v for _, v, _ in events])
    broker = start_broker()
    admin = admin_client(broker.bootstrap)
    source = unique_name("nexmark-paired")
    create_topics(admin, [source], 4, {"retention.ms": "-1"})
    prefill(broker.bootstrap, source, events, config=ORDERED)  # Step 1
    del events
    probe = OffsetProbe(broker.bootstrap)
    runs: list[dict[str, Any]] = []

    def one(system: System, query: str, rnd: int) -> None:
        try:
            r = throughput_run(system, query, rnd, harness, broker, source, ref, probe)
        except Exception as exc:  # recorded; the series goes on
            r = {"query": query, "error": repr(exc), "check": {"ok": False}}
        r.update(
            {"side": {"weir-old": "old", "weir": "new", "raw": "raw"}[system.name], "round": rnd}
        )
        runs.append(r)
        rate, cpu = r.get("records_per_s", 0), r.get("cpu_s_per_million", 0)
        ok = r["check"].get("ok")
        print(f"round {rnd} {query} {r['side']}: {rate:,.0f} ev/s, {cpu:.2f} CPU-s/1M, ok={ok}")

    try:
        for rnd in range(1, args.rounds + 1):  # Steps 2-3
            first, second = (old, new) if rnd % 2 else (new, old)
            for query in queries:
                one(first, query, rnd)
                if query == "q0":
                    one(raw, query, rnd)
                one(second, query, rnd)
    finally:
        probe.close()
        cleanup_topics(admin, source)
    summary = summarize(runs, queries)  # Step 4
    text = report(summary, args)
    args.out.with_suffix(".json").write_text(
        json.dumps({"summary": summary, "runs": runs}, indent=1)
    )
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
