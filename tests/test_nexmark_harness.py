"""The Nexmark harness's own logic (no broker): when a windowed run is done, the
second-half figures, the Weir ÷ JVM-engine ratios, the JVM peers' log markers, the
parameters handed to them and how a run declared not verifiable is reported."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import orjson

from benchmarks.nexmark import spec
from benchmarks.nexmark.generator import GeneratorConfig, generate
from benchmarks.nexmark.reference import Reference, WindowProgress
from benchmarks.nexmark.run import (
    _fmt_cell,
    _verified,
    jvm_ratios,
    log_markers,
    second_half,
    summarize,
)
from benchmarks.nexmark.systems import BY_NAME, SPEC_JSON


def _reference(n: int = 30_000) -> Reference:
    return Reference([v for _, v, _ in generate(n, GeneratorConfig(base_time_ms=0))])


def test_window_progress_is_done_only_when_every_closed_window_has_its_maximum() -> None:
    ref = _reference()
    required = ref.required_windows("q7")
    assert len(required) >= 2
    progress = WindowProgress(ref, "q7")
    first, *rest = sorted(required)
    progress.note({"window_start": first, "price": required[first] - 1})  # not the maximum
    progress.note({"unrelated": 1})
    assert not progress.done
    for start in [first, *rest]:
        progress.note({"window_start": start, "price": required[start]})
    assert progress.done


def test_jvm_ratios_pair_weir_with_each_engine_at_the_same_cores() -> None:
    cells = {
        "weir": {"q0": {"records_per_s": 50.0, "cpu_s_per_million": 8.0, "peak_rss_mb": 100}},
        "flink": {"q0": {"records_per_s": 100.0, "cpu_s_per_million": 4.0, "peak_rss_mb": 400}},
        "weir-2": {"q0": {"status": "failed"}},
        "flink-2": {"q0": {"records_per_s": 150.0}},
    }
    rows = jvm_ratios(cells, ["q0"])
    assert [(r["weir"], r["peer"], r["cores"]) for r in rows] == [
        ("weir", "flink", 1),
        ("weir-2", "flink-2", 2),
    ]
    assert rows[0]["queries"]["q0"] == {
        "records_per_s": 0.5,
        "cpu_s_per_million": 2.0,
        "peak_rss_mb": 0.25,
    }
    assert rows[1]["queries"]["q0"] == {}


def test_log_markers_reads_the_peers_lines(tmp_path: Path) -> None:
    log = tmp_path / "peer.log"
    log.write_text(
        "[main] WARN something\n"
        "nexmark-peer: source-open 1000\n"
        "nexmark-peer: first-record 1500\n"
        "nexmark-peer: first-record 1200\n"
    )
    child = SimpleNamespace(log_path=log)
    assert log_markers(child, "first-record") == [1500, 1200]  # type: ignore[arg-type]
    assert log_markers(child, "running") == []  # type: ignore[arg-type]


def test_the_jvm_peers_get_spec_py_parameters() -> None:
    handed = orjson.loads(SPEC_JSON)
    assert handed == {
        "dollar_to_euro": spec.DOLLAR_TO_EURO,
        "q2_modulus": spec.Q2_MODULUS,
        "q5_size_ms": spec.Q5_SIZE_MS,
        "q5_slide_ms": spec.Q5_SLIDE_MS,
        "q7_size_ms": spec.Q7_SIZE_MS,
        "out_of_orderness_ms": 1000,
    }
    assert {BY_NAME[n].parallelism for n in ("weir-2", "flink-2", "kstreams-2")} == {2}
    assert BY_NAME["flink"].start == "log" and BY_NAME["kstreams"].start == "group"


def test_second_half_times_the_later_half_of_the_outputs() -> None:
    ref = _reference(1000)
    # q0: one output per event; the first half takes 9 s, the second half 1 s.
    stamps = [int(i * 18) for i in range(500)] + [9000 + 2 * i for i in range(1, 501)]
    measured = [(t, {}) for t in stamps]
    cpu = SimpleNamespace(between=lambda t0, t1: {"child": (t1 - t0) * 0.5})
    warm = second_half("q0", ref, measured, cpu)  # type: ignore[arg-type]
    assert abs(warm["warm_events"] - 500) <= 1
    assert 450 <= warm["warm_records_per_s"] <= 560  # ~500 events in ~1 s
    assert abs(warm["warm_cpu_s_per_million"] - 0.5 / 500 * 1e6) < 0.1 * 1e3
    assert second_half("q0", ref, measured[:3], cpu) == {}  # type: ignore[arg-type]


def test_a_run_declared_not_verifiable_keeps_its_figures_marked_not_verified() -> None:
    def run(system: str, **extra: str) -> dict:
        return {
            "system": system, "query": "q8", "run": 1,
            "check": {"ok": "not_verified" not in extra, "duplicates": 0},
            "records_per_s": 100.0, "cpu_s_per_million": 5.0, "peak_rss_mb": 90.0,
            "other_load_cores": 0.1, **extra,
        }  # fmt: skip

    runs = [run("weir"), run("quix", not_verified="3/10 rows missing")]
    summary = summarize([BY_NAME["weir"], BY_NAME["quix"]], ["q8"], runs)
    quix, weir = summary["cells"]["quix"]["q8"], summary["cells"]["weir"]["q8"]
    assert quix["status"] == "ok" and quix["verified_runs"] == 0
    assert quix["not_verified"] == BY_NAME["quix"].not_verifiable["q8"]
    assert _fmt_cell(quix, "records_per_s", "{:,.0f}") == "100 (not verified)"
    assert _verified(quix) == "0/1 (not verified: see below)"
    assert _verified(weir) == "1/1" and "not_verified" not in weir
    assert summary["ratios"]["weir/quix q8"] == 1.0
