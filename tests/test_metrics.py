"""Metrics hygiene: what a scrape of /metrics shows, and what it no longer shows.

Per-partition series leave with their partition; busy and backpressure are counters
of seconds, never going down; ``weir_worker_info`` names the worker; the job label is
``weir_job``, so Prometheus' own ``job`` label (the scrape job) is left alone.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.feeding import Feeder, n_key, numbered
from tests.waiting import wait_for
from tests.workers import WorkerProcess, job_env, split_tp
from weir import __version__
from weir.service.metrics import Metrics

BOUND = 60.0


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every ``weir_`` sample of a /metrics page: (name, labels, value)."""
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("weir_")
    ]


def partitions_in(text: str, name: str) -> set[tuple[str, int]]:
    return {(lb["topic"], int(lb["partition"])) for n, lb, _ in samples(text) if n == name}


def test_a_partition_leaving_takes_its_series_with_it():
    metrics = Metrics("j", worker_id="w", group="g")
    metrics.count_in({("t", 0): 5, ("t", 1): 3})
    metrics.set_lag(("t", 0), 7)
    metrics.set_lag(("t", 1), 2)
    metrics.forget_partitions([("t", 0), ("t", 9)])  # 9 never had series
    text = generate_latest(metrics.registry).decode()
    assert partitions_in(text, "weir_records_in_total") == {("t", 1)}
    assert partitions_in(text, "weir_consumer_lag") == {("t", 1)}
    metrics.count_in({("t", 0): 1})  # it came back: its counter starts again
    assert (
        metrics.registry.get_sample_value(
            "weir_records_in_total", {"weir_job": "j", "topic": "t", "partition": "0"}
        )
        == 1
    )


def test_worker_info_and_the_weir_job_label():
    metrics = Metrics("j", worker_id="w.1", group="g")
    metrics.rebalances.labels(metrics.job).inc()
    text = generate_latest(metrics.registry).decode()
    info = [lb for n, lb, v in samples(text) if n == "weir_worker_info" and v == 1]
    assert info == [{"weir_job": "j", "worker_id": "w.1", "group": "g", "version": __version__}]
    assert all("job" not in lb and lb["weir_job"] == "j" for _, lb, _ in samples(text))


def test_two_workers_scrape_only_their_partitions_and_counters_only_grow(
    kafka_bootstrap, new_topic, tmp_path
):
    """Worker a owns all four partitions, then b joins the group: a's scrape loses the
    series of the partitions it gave up, and its counters never go down meanwhile."""
    source, sink = new_topic(partitions=4), new_topic(partitions=4)
    group = f"metrics-{uuid.uuid4().hex[:8]}"
    env = job_env(in_=source, out=sink)
    args = ["--checkpoint-interval-ms", "200", "--slots", "2"]

    def worker(worker_id: str) -> WorkerProcess:
        return WorkerProcess(
            "tagged.py", kafka_bootstrap, group, worker_id, tmp_path, env=env,
            args=[*args, "--state-dir", str(tmp_path / worker_id)],
        )  # fmt: skip

    counters: dict[tuple[str, frozenset], list[float]] = defaultdict(list)

    def scrape(w: WorkerProcess) -> str:
        text = w.metrics()
        for name, labels, value in samples(text):
            if name in ("weir_slot_busy_seconds_total", "weir_slot_backpressure_seconds_total"):
                counters[(name, frozenset(labels.items()))].append(value)
        return text

    def owned(w: WorkerProcess) -> set[tuple[str, int]]:
        return {split_tp(item) for item in w.status()["partitions"]}

    feeder = Feeder(kafka_bootstrap, source, numbered(), 400, key=n_key)
    a = worker("a")
    b = None
    try:
        a.wait_running(BOUND)
        feeder.start()
        every = {(source, p) for p in range(4)}

        def a_reports_all() -> bool:
            text = scrape(a)
            return (
                partitions_in(text, "weir_records_in_total")
                == every
                == partitions_in(text, "weir_consumer_lag")
            )

        wait_for(a_reports_all, BOUND, "a's series of all four partitions", every=0.5)
        text = scrape(a)
        info = [lb for n, lb, _ in samples(text) if n == "weir_worker_info"]
        assert info == [
            {"weir_job": "tagged", "worker_id": "a", "group": group, "version": __version__}
        ]
        assert not any("job" in lb for _, lb, _ in samples(text)), "job is Prometheus' label"

        b = worker("b")
        b.wait_running(BOUND)

        def split() -> bool:
            mine, theirs = owned(a), owned(b)
            if not mine or not theirs or mine | theirs != every:
                return False
            text = scrape(a)
            return (
                partitions_in(text, "weir_records_in_total") == mine
                and partitions_in(text, "weir_consumer_lag") <= mine
            )

        wait_for(split, BOUND, "a's scrape showing only the partitions it kept", every=0.5)
        given_up = every - owned(a)
        assert given_up and not partitions_in(scrape(a), "weir_records_in_total") & given_up
        wait_for(
            lambda: partitions_in(b.metrics(), "weir_records_in_total") == owned(b),
            BOUND,
            "b's series of its partitions",
            every=0.5,
        )
        time.sleep(2)  # a couple more samples of the counters
        scrape(a)
    finally:
        feeder.halt()
        for w in (a, b):
            if w is not None:
                w.close()
    busy = {k: v for k, v in counters.items() if k[0] == "weir_slot_busy_seconds_total"}
    assert busy and all(len(v) >= 3 for v in busy.values()), counters
    for (name, labels), values in counters.items():
        assert values == sorted(values), f"{name}{dict(labels)} went down: {values}"
    assert any(v[-1] > v[0] for v in busy.values()), "the slots were busy some of the time"
