"""The status page's job graph and history, without a broker: the graph cuts a plan into
the tasks the slots count under, and the history turns those counters into the figures
and charts the page draws."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.fakes import Msg, Slots, node_id
from weir import Job, Tumbling
from weir.operators.build import build_chain
from weir.operators.physical import compile_plan
from weir.service.checkpoint import CheckpointRecord
from weir.service.graph import JobGraph
from weir.service.history import FIGURES_S, SAMPLES, History


def repartitioned() -> Job:
    """The example's shape: a key_by(fn) before a window goes through a repartition topic."""
    job = Job("rep")
    (
        job.source("in", timestamp=lambda r: r["ts"])
        .filter(bool)
        .key_by(lambda r: r["tag"], name="by-tag")
        .window(Tumbling(seconds=10), late_topic="late")
        .aggregate(count="count")
        .sink("out")
    )
    return job


def exchanged() -> Job:
    """Branches with a hash exchange, a rebalance, and forward/rescale that move nothing."""
    job = Job("ex")
    src = job.source("in")
    src.flat_map(lambda r: [r]).key_by(lambda r: r["k"], name="by-k").map(str).sink("words")
    src.filter(bool).forward().rebalance(name="spread").sink("evens")
    src.rescale().sink("copy")
    return job


class ChainContext:
    """Just enough of a slot for `build_chain`."""

    slot, slots, state = 0, 2, None

    def __init__(self) -> None:
        self.shared: dict = {}


def several_inputs() -> Job:
    """A union (one input behind a rebalance) into a window join with a third stream."""
    job = Job("multi")
    a = job.source("a", timestamp=lambda r: r["ts"])
    b = job.source("b", timestamp=lambda r: r["ts"]).rebalance(name="spread")
    c = job.source("c", timestamp=lambda r: r["ts"]).key_by(lambda r: r["k"], name="by-k")
    (
        a.union(b, name="both")
        .key_by(lambda r: r["k"], name="both-by-k")
        .join(c)
        .window(Tumbling(seconds=10))
        .apply(name="pairs")
        .sink("out")
    )
    return job


@pytest.mark.parametrize("make", [repartitioned, exchanged, several_inputs])
def test_the_graph_has_a_task_for_every_input_a_slot_chains(make):
    job = make()
    plan = compile_plan(job, "g")
    graph = JobGraph.of(plan)
    tasks = {n.key for n in graph.nodes.values() if n.kind == "task"}
    chain = build_chain(plan.roots, ChainContext(), plan.max_key_groups)
    assert tasks == set(chain.sources) | set(chain.inputs), "the keys slots count under"
    topics = {n.label for n in graph.nodes.values() if n.kind == "topic"}
    assert topics == set(plan.user_source_topics) | set(plan.sink_topics)
    for edge in graph.edges:  # drawn left to right
        assert graph.nodes[edge.source].column < graph.nodes[edge.target].column, edge
    places = [(n.column, n.row) for n in graph.nodes.values()]
    assert len(set(places)) == len(places), "no two nodes in one place"


def test_the_graph_draws_exchanges_and_repartition_topics_as_edges():
    graph = JobGraph.of(compile_plan(repartitioned(), "g"))
    edges = {(e.kind, e.label) for e in graph.edges}
    assert edges == {
        ("source", "in"),
        ("repartition", "g.by-tag.repartition"),
        ("sink", "out"),
        ("late", "late"),
    }
    reader = graph.nodes["input:g.by-tag.repartition"]
    assert [o["kind"] for o in reader.operators] == ["source", "window", "sink"]
    assert [o["kind"] for o in graph.nodes["input:in"].operators] == ["source", "filter", "key_by"]

    job = exchanged()
    graph = JobGraph.of(compile_plan(job, "g"))
    kinds = {(e.kind, e.target) for e in graph.edges if e.kind not in ("source", "sink")}
    assert kinds == {
        ("hash", f"exchange:{node_id(job, 'by-k')}"),
        ("rebalance", f"exchange:{node_id(job, 'spread')}"),
    }, "forward and rescale move nothing: no edge of their own"
    source_ops = [o["name"] for o in graph.nodes["input:in"].operators]
    assert "forward-" not in " ".join(source_ops) and "sink-copy" in source_ops


def test_the_graph_draws_a_union_once_and_each_side_of_a_join():
    job = several_inputs()
    graph = JobGraph.of(compile_plan(job, "g"))
    union = graph.nodes[f"exchange:{node_id(job, 'both')}"]
    assert union.label == "Union: both of source-a, spread"
    assert [o["name"] for o in union.operators] == ["both-by-k"], "chained once"
    into_union = {e.source for e in graph.edges if e.target == union.id}
    assert into_union == {"input:a", f"exchange:{node_id(job, 'spread')}"}
    reader = graph.nodes["input:g.pairs.repartition"]
    assert reader.label == "Inputs of pairs: g.pairs.repartition"
    sides = sorted((e.source, e.label) for e in graph.edges if e.kind == "side")
    assert sides == sorted(
        [("input:c", "g.pairs.repartition side 1"), (union.id, "g.pairs.repartition side 0")]
    )


def test_slots_count_records_busy_time_and_outputs_per_task():
    job = Job("x")
    job.source("in").map(lambda r: r).key_by(lambda r: r["k"], name="by-k").sink("out")
    slots = Slots(job, 2)
    slots.fetch(0, "in", 0, [Msg("in", 0, i, {"k": f"k{i}"}) for i in range(40)])
    slots.settle()
    exchange = node_id(job, "by-k")
    assert slots[0].stats.tasks["in"][0] == 40 and slots[0].stats.tasks["in"][1] > 0
    behind = [s.stats.tasks.get(exchange, [0, 0.0])[0] for s in slots.all]
    assert sum(behind) == 40 and all(behind), "the exchange spread the keys over both slots"
    assert sum(s.stats.produced.get("out", 0) for s in slots.all) == 40
    graph = JobGraph.of(compile_plan(job, "x"))
    counted = {key for s in slots.all for key in s.stats.tasks}
    assert counted == {n.key for n in graph.nodes.values() if n.kind == "task"}


# -- the history ------------------------------------------------------------------------------


class FakeSlot:
    def __init__(self, index: int) -> None:
        self.slot = index
        self.stats = SimpleNamespace(tasks={}, produced={})


def fake_worker(job: Job, slots: int) -> SimpleNamespace:
    plan = compile_plan(job, job.name)
    feeds = {0: [("in", 0)], 1: [("in", 1)]}
    return SimpleNamespace(
        plan=plan,
        slots=[FakeSlot(i) for i in range(slots)],
        flow=SimpleNamespace(full_s={}),
        router=SimpleNamespace(feeds=lambda s: feeds.get(s, [])),
        coordinator=SimpleNamespace(history=[]),
        sampler=SimpleNamespace(lag={}),
        watermarks=SimpleNamespace(watermark=0),
    )


def test_history_turns_counters_into_rates_shares_and_points():
    job = Job("h")
    job.source("in").key_by(lambda r: r["k"], name="by-k").map(str).sink("out")
    exchange = node_id(job, "by-k")
    w = fake_worker(job, 2)
    history = History(w)
    history.sample(now=100.0)
    assert history.figures is None, "nothing to compare with yet"

    a, b = w.slots
    a.stats.tasks.update({"in": [300, 0.5], exchange: [100, 0.1]})
    b.stats.tasks.update({"in": [100, 0.1], exchange: [300, 0.9]})
    a.stats.produced["out"], b.stats.produced["out"] = 100, 300
    w.flow.full_s[1] = 0.25
    w.sampler.lag = {("in", 0): 7, ("in", 1): 5}
    w.coordinator.history = [CheckpointRecord(1, "completed", 0.2, 0.1, 2),
                             CheckpointRecord(2, "completed", 0.4, 0.1, 2),
                             CheckpointRecord(3, "failed", 1.0, 0.0, 0)]  # fmt: skip
    w.watermarks.watermark = 1_000  # long ago
    history.sample(now=101.0)

    f = history.figures
    assert f.records_per_s == {"in": 400.0, exchange: 400.0}
    assert f.busy == {"in": 0.5, exchange: 0.9}, "the busiest slot's share"
    assert f.backpressure == {"in": 0.25}, "slot 1 was full a quarter of the time"
    assert f.produced_per_s == {"out": 400.0}
    point = history.samples[-1]
    assert point["records_in_per_s"] == 400.0 and point["records_out_per_s"] == 400.0
    assert point["consumer_lag"] == 12 and point["watermark_lag_s"] > 1e6
    assert point["checkpoint_s"] == 0.4 and point["checkpoints_failed"] == 1

    graph = history.graph_json()
    tasks = {n["id"]: n for n in graph["nodes"] if n["kind"] == "task"}
    assert tasks["input:in"]["backpressure"] == 0.25
    assert tasks[f"exchange:{exchange}"]["backpressure"] == 0.0, "an exchange never waits"
    assert {e["kind"]: e["records_per_s"] for e in graph["edges"]} == {
        "source": 400.0,
        "hash": 400.0,
        "sink": 400.0,
    }

    # A restarted slot starts from zero: its new counters are its rate, not a negative one.
    w.slots[1] = FakeSlot(1)
    w.slots[1].stats.tasks["in"] = [50, 0.0]
    w.coordinator.history = w.coordinator.history[1:]  # ids already seen add nothing
    history.sample(now=102.0)
    latest = history.samples[-1]
    assert latest["records_in_per_s"] == 50.0 and latest["checkpoint_s"] is None
    assert history.figures.records_per_s["in"] == pytest.approx(450 / 2), "over the last 2 s"


def test_history_is_a_bounded_ring_read_since_a_time():
    job = Job("r")
    job.source("in").sink("out")
    history = History(fake_worker(job, 1))
    for i in range(SAMPLES + 20):
        history.sample(now=float(i), wall=1_700_000_000.0 + i)
    assert len(history.samples) == SAMPLES
    assert len(history._deltas) == FIGURES_S
    times = [s["t"] for s in history.samples]
    assert times == sorted(times)
    assert history.since(times[-3]) == list(history.samples)[-2:]
    assert history.since(0) == list(history.samples)
