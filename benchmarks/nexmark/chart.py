"""Bar chart of benchmarks/results/nexmark.json (run with benchmarks/.peers/tools' Python).

Usage: python chart.py nexmark.json nexmark.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {
    "weir": "#1f77b4", "weir-alo": "#aec7e8", "quix": "#ff7f0e", "faust": "#2ca02c",
    "bytewax": "#9467bd", "raw": "#7f7f7f", "weir-2": "#17becf", "flink": "#d62728",
    "flink-2": "#ff9896", "kstreams": "#8c564b", "kstreams-2": "#c49c94",
}  # fmt: skip
LABELS = {
    "weir": "Weir (exactly-once)", "weir-alo": "Weir (at-least-once)",
    "quix": "Quix Streams (exactly-once)", "faust": "Faust (exactly-once)",
    "bytewax": "Bytewax (at-least-once)", "raw": "raw confluent-kafka loop (at-least-once)",
}  # fmt: skip


def main(src: str, dst: str) -> int:
    with open(src) as f:
        report = json.load(f)
    cells = report["summary"]["cells"]
    labels = {**LABELS, **report.get("labels", {})}
    queries, systems = report["queries"], report["systems"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / max(1, len(systems))
    for i, s in enumerate(systems):
        xs, ys = [], []
        for j, q in enumerate(queries):
            cell = cells[s][q]
            if "records_per_s" in cell:
                xs.append(j + (i - (len(systems) - 1) / 2) * width)
                ys.append(cell["records_per_s"] / 1000)
        bars = ax.bar(xs, ys, width, label=labels.get(s, s), color=COLORS.get(s))
        for b, y in zip(bars, ys, strict=True):
            ax.annotate(f"{y:.0f}", (b.get_x() + b.get_width() / 2, y), ha="center",
                        va="bottom", fontsize=7)  # fmt: skip
        for j, q in enumerate(queries):
            if cells[s][q].get("status") == "failed":
                x = j + (i - (len(systems) - 1) / 2) * width
                ax.annotate("✗", (x, 0), ha="center", va="bottom", color="red", fontsize=9)
    ax.set_xticks(range(len(queries)), queries)
    ax.set_ylabel("thousand input events / s (median)")
    m = report["machine"]
    ax.set_title(
        f"Nexmark throughput, {report['args']['events']:,} events, {m['nproc']} CPUs,"
        f" 1 local Kafka broker {m['kafka']}",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    lat = [r for r in report.get("latency", []) if "p99_ms" in r]
    if lat:
        names = [f"{r['system']} {r['query']}" for r in lat]
        colors = [COLORS.get(r["system"], "gray") for r in lat]
        ax2.barh(names, [r["p99_ms"] for r in lat], color=colors, alpha=0.5, label="p99")
        ax2.barh(names, [r["p50_ms"] for r in lat], color=colors, label="p50")
        ax2.set_xlabel("latency ms (p50 solid, p99 light)")
        ax2.set_xscale("log")
        ax2.set_title(f"latency at {report['args']['latency_rate']:g} events/s", fontsize=10)
        ax2.invert_yaxis()
        ax2.tick_params(axis="y", labelsize=8)
    else:
        ax2.axis("off")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
