"""Operators with several inputs, without a broker: the plans they compile to, what
`weir plan` shows of them, and the definition-time errors a job author sees.
(Their barrier alignment: tests/test_protocols.py; on a real broker:
tests/test_union.py.)"""

from __future__ import annotations

import copy
import os
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.rules_reference import replay_rules
from tests.workers import JOBS
from weir import (
    Job,
    JobDefinitionError,
    KeyedBroadcastProcessFunction,
    Session,
    Sliding,
    Tumbling,
)
from weir.operators.broadcast import BroadcastProcessOp
from weir.operators.chain import Batch, Operator
from weir.operators.interval_join import IntervalJoinOp
from weir.operators.keyed import states_of
from weir.operators.physical import compile_plan
from weir.operators.plan import MergedSource, RepartitionSource, SideRepartition, Union
from weir.operators.sides import ORIGIN_SETTLE_S, SideClocks, origin_of, topic_number
from weir.operators.table_join import TableJoinOp
from weir.operators.timers import NO_TIME
from weir.operators.window_join import WindowJoinOp
from weir.service.jobfile import load_job
from weir.service.router import KEY_GROUPS, SlotRouter
from weir.service.watermarks import WatermarkTracker
from weir.state.epoch import EpochBuffer
from weir.state.layout import partition_key, state_key
from weir.state.serde import JsonSerde
from weir.state.store import StateStore
from weir.testing import JobTester


def union_job() -> Job:
    """Two sources, one behind a rebalance, merged and counted per key."""
    job = Job("u")
    eu = job.source("eu", max_out_of_orderness=1, idle_timeout=2)
    us = job.source("us", max_out_of_orderness=3, idle_timeout=5).rebalance(name="spread")
    (
        eu.union(us, name="both")
        .key_by(lambda r: r["k"], name="by-k")
        .reduce(lambda a, b: b, name="last")
        .sink("out")
    )
    return job


def test_a_union_is_one_node_fed_by_each_of_its_inputs():
    plan = compile_plan(union_job(), "g")
    eu, us, internal = plan.roots
    (union_from_eu,) = eu.children
    (spread,) = us.children
    (union_from_us,) = spread.children
    assert union_from_eu is union_from_us, "compiled once, shared by both inputs"
    assert isinstance(union_from_eu.op, Union)
    assert union_from_eu.op.inputs == ("source-eu", "spread")
    assert [n.op.name for n in plan.nodes()].count("both") == 1, "walked once"
    assert isinstance(internal.op, RepartitionSource)
    assert internal.op.upstream == "eu", "partitioned as the first input"
    assert plan.watermark_channels == (), "no timers behind it: no watermark to carry"
    assert [s.name for s in plan.stateful] == ["last"]


def test_plan_shows_a_union_once_with_its_inputs():
    text = compile_plan(union_job(), "g").describe()
    assert "both: union of source-eu, spread" in text
    assert "-> both (an input of it; described above)" in text
    assert text.count("sink-out") == 1


def test_union_is_checked_when_defined():
    job = Job("u")
    a, b = job.source("a"), job.source("b")
    with pytest.raises(JobDefinitionError, match="at least one other stream"):
        a.union()
    with pytest.raises(JobDefinitionError, match="'source-b' is given twice"):
        a.union(b, b)
    other = Job("other")
    with pytest.raises(JobDefinitionError, match="belongs to job 'other'"):
        a.union(other.source("c"))


def test_keyed_state_right_after_a_union_needs_a_key_by_fn():
    job = Job("u")
    a, b = job.source("a"), job.source("b")
    a.key_by().union(b.key_by(), name="both").key_by().reduce(lambda x, y: y).sink("out")
    with pytest.raises(JobDefinitionError, match="after both, which merges streams partitioned"):
        compile_plan(job, "g")


def readme_examples() -> list[str]:
    """The Python examples of README.md's "Several inputs" section."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("## Several inputs", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.parametrize("example", readme_examples())
def test_readme_examples_of_several_inputs_compile(example):
    scope: dict = {}
    exec(example, scope)  # the README's own example
    plan = compile_plan(scope["job"], "g")
    assert plan.sink_topics, "the example writes somewhere"


# -- stream-table join as of event time ----------------------------------------------------


def table_join_job(how: str = "inner") -> Job:
    job = Job("tj")
    customers = job.table("customers", idle_timeout=3)
    (
        job.source("orders", timestamp=lambda o: o["ts"], max_out_of_orderness=2)
        .key_by(lambda o: o["customer"], name="by-customer")
        .join_table(customers, lambda o, c: {"order": o["id"], "city": c and c["city"]},
                    how=how, name="enrich")
        .sink("out")
    )  # fmt: skip
    return job


def test_a_table_join_repartitions_both_sides_into_its_own_topic():
    plan = compile_plan(table_join_job(), "g")
    customers, orders, merged = plan.roots  # in the order the job defined them
    (stream_side,) = orders.children
    (table_side,) = customers.children
    assert isinstance(stream_side.op, SideRepartition) and stream_side.op.name == "by-customer"
    assert (stream_side.op.side, table_side.op.side) == (0, 1)
    assert stream_side.op.topic == table_side.op.topic == "g.enrich.repartition"
    assert table_side.op.fn is None, "a table is keyed by its record key"
    assert isinstance(merged.op, MergedSource) and merged.op.topic == "g.enrich.repartition"
    assert merged.op.clocks == ((2.0, None), (0.0, 3)), "each side keeps its sources' settings"
    assert merged.op.upstream == "orders", "partitioned like the stream by default"
    (state,) = plan.stateful
    assert state.input_topic == "g.enrich.repartition"
    assert state.states == ("enrich.rows", "enrich.watermark", "enrich.sides")
    assert plan.watermark_channels == (), "its sides carry their own time"
    clock = WatermarkTracker.for_plan(plan).sources["g.enrich.repartition"]
    assert not clock.announced, "its watermark comes from its sides' records, not announced"
    assert plan.event_time_sources == (merged.op,)
    assert plan.repartition_topics == ["g.enrich.repartition"]
    text = plan.describe()
    assert "enrich: join_table how=inner of by-customer with table customers" in text
    assert "table-customers: source table topic=customers" in text


def test_join_table_is_checked_when_defined():
    job = Job("tj")
    table = job.table("t")
    keyed = job.source("s").key_by()
    with pytest.raises(JobDefinitionError, match="how='outer'"):
        keyed.join_table(table, how="outer")
    with pytest.raises(JobDefinitionError, match="expected a table of this job"):
        keyed.join_table(job.source("x"))
    with pytest.raises(JobDefinitionError, match="belongs to job 'other'"):
        keyed.join_table(Job("other").table("t"))


class JoinCtx:
    """The slot context a join operator sees: state over a real RocksDB store, outputs
    and late records collected."""

    def __init__(self, buffer) -> None:
        self.slot, self.slots, self.state, self.shared = 0, 1, buffer, {}
        self.failed: list = []
        self.late_count = 0

    def fail(self, operator, reason, batch, elem, exc):
        self.failed.append((reason, elem, exc))

    def late(self, operator, count, reason="late"):
        self.late_count += count


class Collect(Operator):
    def __init__(self) -> None:
        self.out = None
        self.rows: list = []

    def process(self, batch):
        self.rows.extend(batch.elems)


class JoinRig:
    """A table join operator over a RocksDB store, restartable from its last checkpoint."""

    def __init__(self, tmp_path, how: str) -> None:
        plan = compile_plan(table_join_job(how), "g")
        self.node = next(s.op for s in plan.stateful)
        self.states = states_of(self.node)
        self.db = StateStore(tmp_path / "db", self.states)
        self.collect = Collect()
        self.checkpoints = 0
        self.start()

    def start(self) -> None:
        self.ctx = JoinCtx(EpochBuffer(self.db, {s: JsonSerde() for s in self.states}))
        self.op = TableJoinOp(self.node, self.ctx, 128, "g.enrich.repartition")
        self.op.out = self.collect
        self.op.own({0}, None)

    def feed(self, elems: list, watermark: int) -> None:
        self.op.process(Batch("g.enrich.repartition", 0, elems))
        self.op.advance(watermark, 0)

    def restart(self) -> None:
        """Checkpoint, then a fresh operator over what was committed."""
        self.checkpoints += 1
        self.db.apply(self.ctx.state.freeze(), {}, self.checkpoints)
        self.start()


def reference_as_of(events: list[tuple], how: str) -> list[tuple]:
    """(order id, city) rows by the README's definition of "current"."""
    rows = []
    for side, key, t, value in events:
        if side != 0:
            continue
        versions = [(vt, v) for s, k, vt, v in events if s == 1 and k == key and vt <= t]
        row = max(versions, key=lambda x: x[0])[1] if versions else None
        if row is not None or how == "left":
            rows.append((value["id"], row and row["city"]))
    return sorted(rows, key=str)


EVENTS = st.lists(
    st.tuples(st.sampled_from([0, 1]), st.sampled_from("abc"), st.integers(0, 30), st.integers()),
    max_size=40,
)


@settings(max_examples=80, deadline=None)
@given(
    EVENTS,
    st.sampled_from(["inner", "left"]),
    st.integers(0, 8),
    st.randoms(use_true_random=False),
    st.integers(0, 40),
)
def test_each_stream_record_joins_the_table_value_current_at_its_event_time(
    tmp_path_factory, raw, how, disorder, rng, restart_at
):
    """Table updates (cities, some deletes) and orders in any arrival order within
    ``disorder``, the watermark trailing by it (nothing late), a restart from a
    checkpoint somewhere: the rows equal the as-of reference."""
    events, seen = [], set()
    for n, (side, key, t, x) in enumerate(raw):
        if side == 1:
            if (key, t) in seen:
                continue  # one update per key and time: "current" is then unambiguous
            seen.add((key, t))
        value = {"id": n} if side == 0 else (None if x % 4 == 0 else {"city": f"c{x % 7}"})
        events.append((side, key, t, value))
    order = sorted(events, key=lambda e: e[2] + rng.uniform(0, disorder))
    rig = JoinRig(tmp_path_factory.mktemp("tj"), how)
    newest = -1
    for offset, (side, key, t, value) in enumerate(order):
        if offset == restart_at:
            rig.restart()
        newest = max(newest, t)
        rig.feed([(key, [side, value], t, offset)], newest - disorder - 1)
    rig.op.advance(10**6, 0)
    assert rig.ctx.late_count == 0 and not rig.ctx.failed
    got = sorted(((v["order"], v["city"]) for _, v, _, _ in rig.collect.rows), key=str)
    assert got == reference_as_of(events, how)
    rig.db.close()


def test_versions_the_watermark_passed_are_dropped_but_the_current_one(tmp_path):
    rig = JoinRig(tmp_path, "left")
    skey = state_key(0, b"a", 128)
    table = [("a", [1, {"city": c}], t, i) for i, (t, c) in enumerate([(10, "x"), (20, "y")])]
    rig.feed([*table, ("a", [1, {"city": "z"}], 30, 2)], 25)
    assert rig.ctx.state.get("enrich.rows", skey)["v"] == [
        [NO_TIME, {"city": "y"}],
        [30, {"city": "z"}],
    ], "20's value is current since forever; 30's is still ahead"
    rig.feed([("a", [1, None], 40, 3)], 50)
    assert rig.ctx.state.get("enrich.rows", skey) is None, "deleted, nothing waits: gone"
    rig.feed([("a", [0, {"id": 7}], 45, 4)], 60)
    assert rig.ctx.late_count == 1, "an order behind the watermark is late"
    assert [v for _, v, _, _ in rig.collect.rows] == [{"order": 7, "city": None}]
    rig.db.close()


def seen(clocks, partition, newest, now, topic="t", partitions=1, part=0):
    """`SideClocks.observe` for sides whose records all came from ``topic[part]``."""
    origin = origin_of(topic, part)
    return clocks.observe(
        partition,
        {(side, origin): ts for side, ts in newest.items()},
        {(side, topic_number(topic)): partitions for side in newest},
        now,
    )


def test_a_partitions_watermark_is_the_minimum_over_the_sides_not_idle():
    clocks = SideClocks(((1.0, None), (0.0, 2.0)))  # side 0 never idle; side 1 after 2 s
    assert seen(clocks, 0, {0: 10_000}, now=0.0) is None, "nothing known of side 1 yet"
    assert seen(clocks, 0, {1: 3_000}, now=0.5) == 3_000, "the lower side holds it"
    assert seen(clocks, 0, {0: 12_000}, now=2.4) == 3_000, "side 1 quiet 1.9 s: not idle"
    assert seen(clocks, 0, {0: 12_500}, now=2.6) == 11_500, "quiet 2.1 s: idle, left out"
    assert seen(clocks, 0, {1: 5_000}, now=3.0) == 5_000, "back: it holds again"
    assert seen(clocks, 1, {0: 20_000}, now=3.0) is None, "each partition on its own"
    assert seen(clocks, 1, {0: 20_000}, now=5.1) == 19_000, "side 1 never showed: idle"
    assert clocks.mark(0, now=5.1) == 11_500, "with no new batch, side 1 goes idle by time"
    assert clocks.mark(7, now=5.1) is None, "a partition never read has no watermark"
    never = SideClocks(((0.0, None), (0.0, None)))
    assert seen(never, 0, {0: 1}, now=100.0) is None, "a side that is never idle waits"


def test_a_sides_watermark_is_the_minimum_over_the_partitions_it_was_read_from():
    """On a backlog one upstream partition is read ahead of the other: the side waits
    for the one behind, and for one it has not seen until its idle timeout."""
    clocks = SideClocks(((0.0, 3.0),))
    assert seen(clocks, 0, {0: 9_000}, 0.0, "a", 2, part=0) is None, "a[1] not seen yet"
    assert seen(clocks, 0, {0: 2_000}, 0.5, "a", 2, part=1) == 2_000, "a[1] is behind"
    assert seen(clocks, 0, {0: 3_000}, 1.0, "a", 2, part=1) == 3_000
    assert seen(clocks, 0, {0: 9_500}, 3.5, "a", 2, part=0) == 3_000
    assert clocks.mark(0, now=4.1) == 9_500, "a[1] quiet past 3 s: a[0] alone"
    assert seen(clocks, 1, {0: 5_000}, 0.0, "a", 2, part=0) is None
    assert seen(clocks, 1, {0: 5_200}, 3.1, "a", 2, part=0) == 5_200, (
        "a[1] never wrote here: held 3 s, then not"
    )
    clocks.restart(0, now=5.0)  # the partition left this worker and came back
    assert clocks.mark(0, now=5.1) is None, "what it knew is stale: held again"
    unbounded = SideClocks(((0.0, None),))
    assert seen(unbounded, 0, {0: 5_000}, 0.0, "a", 2, part=0) is None
    assert seen(unbounded, 0, {0: 5_100}, ORIGIN_SETTLE_S + 0.1, "a", 2, part=0) == 5_100, (
        "without an idle timeout an origin never seen here holds for the settle time only"
    )
    assert seen(unbounded, 0, {0: 1_000}, 11.0, "a", 2, part=1) == 1_000, "seen: it holds"


def test_a_partition_whose_sides_are_all_idle_reports_the_highest_they_reached():
    """Records read in one burst (a restart reading the last of a backlog): every origin
    goes idle about when the unseen ones settle; the partition still reports how far its
    sides went, and an idle side never holds an active one back."""
    clocks = SideClocks(((0.0, 3.0), (1.0, 3.0)))
    assert seen(clocks, 0, {0: 9_000, 1: 4_000}, 0.0, "a", 2, part=0) is None, "a[1] unseen"
    assert clocks.mark(0, now=3.1) == 9_000, "all idle: the higher side's watermark"
    assert seen(clocks, 0, {0: 10_000}, 3.5, "a", 2, part=0) == 10_000, (
        "side 0 active again; side 1, idle, does not hold it"
    )
    assert seen(clocks, 0, {1: 6_000}, 3.6, "a", 2, part=0) == 5_000, "both active: minimum"


# -- broadcast state --------------------------------------------------------------------


def broadcast_job() -> Job:
    """tests/jobs/broadcast_rules.py, as a worker loads it."""
    env = {"WEIR_TEST_RULES": "rules", "WEIR_TEST_IN": "events", "WEIR_TEST_OUT": "out"}
    os.environ.update(env)
    try:
        return load_job(str(JOBS / "broadcast_rules.py"))
    finally:
        for key in env:
            os.environ.pop(key)


class BroadcastRig(JoinRig):
    def __init__(self, tmp_path) -> None:
        plan = compile_plan(broadcast_job(), "g")
        self.node = next(s.op for s in plan.stateful)
        self.states = states_of(self.node)
        self.db = StateStore(tmp_path / "db", self.states)
        self.collect = Collect()
        self.checkpoints = 0
        self.start()

    def start(self) -> None:
        self.ctx = JoinCtx(EpochBuffer(self.db, {s: JsonSerde() for s in self.states}))
        self.op = BroadcastProcessOp(self.node, self.ctx, 128, "g.match.repartition")
        self.op.out = self.collect
        self.op.own({0}, None)


def test_broadcast_plan_writes_the_rules_to_every_partition():
    plan = compile_plan(broadcast_job(), "g")
    rules, events, merged = plan.roots
    (rule_side,) = rules.children
    assert isinstance(rule_side.op, SideRepartition) and rule_side.op.broadcast
    (keyed,) = events.children
    (event_side,) = keyed.children
    assert not event_side.op.broadcast
    assert plan.everywhere_topics == {merged.op.topic} == {"g.match.repartition"}
    assert plan.stateful[0].states == (
        "match.keyed",
        "match.watermark",
        "match.broadcast",
        "match.sides",
    )
    assert "match: broadcast_process of key_by-3 with broadcast source-rules" in plan.describe()


SHAPES = st.sampled_from(["circle", "square", "star"])
RULE = st.one_of(
    st.tuples(st.just(1), st.none(), st.fixed_dictionaries(
        {"name": st.sampled_from(["r1", "r2", "r3"]), "first": SHAPES, "second": SHAPES})),
    st.tuples(st.just(1), st.none(), st.fixed_dictionaries(
        {"name": st.sampled_from(["r1", "r2", "r3"]), "remove": st.just(True)})),
)  # fmt: skip
EVENT = st.tuples(st.just(0), st.sampled_from(["ann", "bob", "cy"]), SHAPES)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(RULE, EVENT), max_size=60), st.integers(0, 60))
def test_rules_apply_in_the_topics_order_and_survive_a_restart(tmp_path_factory, raw, cut):
    log = [
        (side, user, value if side == 1 else {"n": n, "user": user, "shape": value})
        for n, (side, user, value) in enumerate(raw)
    ]
    rig = BroadcastRig(tmp_path_factory.mktemp("bc"))
    for offset, (side, user, value) in enumerate(log):
        if offset == cut:
            rig.restart()
        rig.feed([(user, [side, value], 1000 + offset, offset)], 0)
    assert not rig.ctx.failed
    assert [v for _, v, _, _ in rig.collect.rows] == replay_rules(log)
    rig.db.close()


class Visitor(KeyedBroadcastProcessFunction):
    """Counts per key; a broadcast record "reset" zeroes every key's count, "boom"
    raises after changing state (which must then not change)."""

    def process_element(self, value, ctx):
        count = ctx.value_state("count")
        count.update(count.value(0) + 1)
        ctx.emit({"key": ctx.key, "count": count.value()})
        if value == "write":
            ctx.broadcast_state("seen").put("x", 1)

    def process_broadcast_element(self, value, ctx):
        ctx.broadcast_state("seen").put(value, True)

        def reset(key, keyed):
            keyed.value_state("count").update(0)
            keyed.emit({"key": key, "reset": True})

        ctx.apply_to_keyed_state(reset)
        if value == "boom":
            raise RuntimeError("boom")


def test_a_broadcast_element_visits_every_key_and_changes_nothing_when_it_raises(tmp_path):
    job = Job("v")
    rules = job.source("rules").broadcast_state()
    job.source("in").key_by().connect(rules).process(Visitor(), name="v").sink("out")
    node = next(s.op for s in compile_plan(job, "g").stateful)
    db = StateStore(tmp_path / "db", states_of(node))
    ctx = JoinCtx(EpochBuffer(db, {s: JsonSerde() for s in states_of(node)}))
    op = BroadcastProcessOp(node, ctx, 128, "t")
    op.out = collect = Collect()
    op.own({0}, None)
    op.process(Batch("t", 0, [("a", [0, "x"], 1, 0), ("b", [0, "x"], 2, 1), ("a", [0, "x"], 3, 2)]))
    op.process(Batch("t", 0, [(None, [1, "reset"], 4, 3), ("a", [0, "x"], 5, 4)]))
    assert [v for _, v, _, _ in collect.rows] == [
        {"key": "a", "count": 1}, {"key": "b", "count": 1}, {"key": "a", "count": 2},
        {"key": "a", "reset": True}, {"key": "b", "reset": True},
        {"key": "a", "count": 1},
    ], "every key visited in key order, then counting again from 0"  # fmt: skip
    collect.rows.clear()
    op.process(Batch("t", 0, [(None, [1, "boom"], 6, 5), ("b", [0, "write"], 7, 6)]))
    assert [(r, e[3]) for r, e, _ in ctx.failed] == [("function", 5), ("function", 6)]
    assert [v for _, v, _, _ in collect.rows] == [], "nothing of either failed call"
    state = ctx.state.get(op.broadcast, partition_key(0))
    assert state == {"seen": {"reset": True}}, "boom's change is not applied"
    assert ctx.state.get(op.state, state_key(0, b"b", 128))["v"] == {"count": 0}
    db.close()


def test_keyless_records_of_a_broadcast_topic_reach_every_slot_in_key_group_mode():
    router = SlotRouter(3, 128, everywhere=frozenset({"m"}))
    router.reassign([("m", 0), ("x", 0)])
    assert router.mode == KEY_GROUPS
    msgs = [KeyedMsg("m", 0, i, k) for i, k in enumerate([b"a", None, b"b", None])]
    per_slot, _, _ = router.route(msgs)
    for slot, batches in enumerate(per_slot):
        offsets = [m.offset() for b in batches for m in b.elems]
        assert {1, 3} <= set(offsets), f"slot {slot} got both broadcast records"
        assert offsets == sorted(offsets), "in their place among the keyed ones"
    other, _, _ = router.route([KeyedMsg("x", 0, 0, None)])
    assert sum(len(b.elems) for batches in other for b in batches) == 1, "elsewhere: one slot"


class KeyedMsg:
    def __init__(self, topic, partition, offset, key):
        self._t, self._p, self._o, self._k = topic, partition, offset, key

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def key(self):
        return self._k

    def timestamp(self):
        return (1, 1000)


# -- window and interval joins ---------------------------------------------------------


def two_stream_job(join) -> Job:
    """Streams "a" and "b" keyed by ``r["k"]``, joined by ``join(a, b)``."""
    job = Job("wj")
    a = job.source("a", timestamp=lambda r: r["t"]).key_by(lambda r: r["k"])
    b = job.source("b", timestamp=lambda r: r["t"]).key_by(lambda r: r["k"])
    join(a, b).sink("out")
    return job


class TwoSidedRig(JoinRig):
    """A join operator of `two_stream_job` over a RocksDB store, restartable."""

    def __init__(self, tmp_path, job: Job, op_class) -> None:
        plan = compile_plan(job, "g")
        self.node = next(s.op for s in plan.stateful)
        self.op_class = op_class
        self.states = states_of(self.node)
        self.db = StateStore(tmp_path / "db", self.states)
        self.collect = Collect()
        self.checkpoints = 0
        self.start()

    def start(self) -> None:
        self.ctx = JoinCtx(EpochBuffer(self.db, {s: JsonSerde() for s in self.states}))
        self.op = self.op_class(self.node, self.ctx, 128, "g.j.repartition")
        self.op.out = self.collect
        self.op.own({0}, None)


def run_two_sided(tmp_path, job, op_class, events, disorder, rng, restart_at) -> TwoSidedRig:
    """Feed ``(side, key, t, id)`` events in an order within ``disorder`` of event time,
    the watermark trailing by it (nothing late), with a restart from a checkpoint."""
    order = sorted(events, key=lambda e: e[2] + rng.uniform(0, disorder))
    rig = TwoSidedRig(tmp_path, job, op_class)
    newest = -1
    for offset, (side, key, t, ident) in enumerate(order):
        if offset == restart_at:
            rig.restart()
        newest = max(newest, t)
        rig.feed([(key, [side, {"id": ident, "k": key, "t": t}], t, offset)], newest - disorder - 1)
    rig.op.advance(10**9, 0)
    assert rig.ctx.late_count == 0 and not rig.ctx.failed
    return rig


def reference_windows(kind: str, size: int, records: list[tuple]) -> dict:
    """Per (key, start, end): (lefts, rights) ids, computed without Weir's window code."""
    out: dict = {}
    by_key: dict = {}
    for side, key, t, ident in records:
        by_key.setdefault(key, []).append((t, side, ident))
    for key, recs in by_key.items():
        if kind == "session":
            recs.sort()
            groups: list[list] = []
            for rec in recs:
                if groups and rec[0] - groups[-1][-1][0] < size:
                    groups[-1].append(rec)
                else:
                    groups.append([rec])
            spans = [(g[0][0], g[-1][0] + size, g) for g in groups]
        else:
            slide = size if kind == "tumbling" else size // 2
            starts: dict = {}
            for rec in recs:
                s = rec[0] - rec[0] % slide
                while s > rec[0] - size:
                    starts.setdefault(s, []).append(rec)
                    s -= slide
            spans = [(s, s + size, g) for s, g in starts.items()]
        for start, end, group in spans:
            lefts = [i for _, side, i in sorted(group) if side == 0]
            rights = [i for _, side, i in sorted(group) if side == 1]
            out[(key, start, end)] = (lefts, rights)
    return out


def reference_pairs(windows: dict, how: str) -> Counter:
    rows: Counter = Counter()
    for (key, start, end), (lefts, rights) in windows.items():
        if lefts and rights:
            rows.update((key, start, end, a, b) for a in lefts for b in rights)
        elif lefts and how != "inner":
            rows.update((key, start, end, a, None) for a in lefts)
        elif rights and how == "full":
            rows.update((key, start, end, None, b) for b in rights)
    return rows


TWO_SIDED = st.lists(
    st.tuples(st.sampled_from([0, 1]), st.sampled_from("xy"), st.integers(0, 80)),
    max_size=40,
)
# Boundaries every property below must get right: records a session gap apart (two
# sessions), one less (one), right records at exactly t + lower and t + upper.
EDGES = [(0, "x", 10), (1, "x", 30), (1, "x", 49), (0, "x", 60), (1, "x", 55), (1, "x", 70)]
SPECS = {
    "tumbling": lambda size: Tumbling(seconds=size / 1000),
    "sliding": lambda size: Sliding(seconds=size / 1000, every=size / 2000),
    "session": lambda size: Session(gap=size / 1000),
}


@settings(max_examples=100, deadline=None)
@example(EDGES, "session", "full", 0, random.Random(1), 99)
@example(EDGES, "tumbling", "left", 0, random.Random(1), 3)
@given(
    TWO_SIDED,
    st.sampled_from(sorted(SPECS)),
    st.sampled_from(["inner", "left", "full"]),
    st.integers(0, 10),
    st.randoms(use_true_random=False),
    st.integers(0, 40),
)
def test_window_join_rows_are_the_pairs_of_each_keys_windows(
    tmp_path_factory, raw, kind, how, disorder, rng, restart_at
):
    size = 20
    events = [(side, key, t, n) for n, (side, key, t) in enumerate(raw)]
    job = two_stream_job(lambda a, b: a.join(b, how=how).window(SPECS[kind](size)).apply(name="j"))
    rig = run_two_sided(
        tmp_path_factory.mktemp("wj"), job, WindowJoinOp, events, disorder, rng, restart_at
    )
    got = Counter(
        (v["key"], v["window_start"], v["window_end"], v["left"] and v["left"]["id"],
         v["right"] and v["right"]["id"])
        for _, v, _, _ in rig.collect.rows
    )  # fmt: skip
    assert got == reference_pairs(reference_windows(kind, size, events), how)
    rig.db.close()


@settings(max_examples=40, deadline=None)
@given(TWO_SIDED, st.integers(0, 10), st.randoms(use_true_random=False), st.integers(0, 40))
def test_a_window_join_process_sees_both_sides_of_windows_with_both(
    tmp_path_factory, raw, disorder, rng, restart_at
):
    events = [(side, key, t, n) for n, (side, key, t) in enumerate(raw)]

    def both(key, window, lefts, rights):
        return [{"key": key, "w": list(window), "l": [r["id"] for r in lefts],
                 "r": [r["id"] for r in rights]}]  # fmt: skip

    job = two_stream_job(lambda a, b: a.join(b).window(Tumbling(seconds=0.02)).process(both))
    rig = run_two_sided(
        tmp_path_factory.mktemp("wj"), job, WindowJoinOp, events, disorder, rng, restart_at
    )
    got = {(v["key"], *v["w"]): (v["l"], v["r"]) for _, v, _, _ in rig.collect.rows}
    assert len(got) == len(rig.collect.rows), "each window once"
    want = {
        w: sides for w, sides in reference_windows("tumbling", 20, events).items() if all(sides)
    }
    assert {w: tuple(map(sorted, s)) for w, s in got.items()} == {
        w: tuple(map(sorted, s)) for w, s in want.items()
    }
    rig.db.close()


@settings(max_examples=100, deadline=None)
@example(EDGES, -5, 15, 0, random.Random(1), 99)  # 60 meets 55 and 70 at the bounds
@given(
    TWO_SIDED,
    st.integers(-30, 10),
    st.integers(0, 30),
    st.integers(0, 10),
    st.randoms(use_true_random=False),
    st.integers(0, 40),
)
def test_interval_join_pairs_each_left_record_with_the_right_ones_in_its_interval(
    tmp_path_factory, raw, lower, span, disorder, rng, restart_at
):
    events = [(side, key, t, n) for n, (side, key, t) in enumerate(raw)]
    upper = lower + span
    job = two_stream_job(
        lambda a, b: a.interval_join(b, lower=lower / 1000, upper=upper / 1000, name="j")
    )
    rig = run_two_sided(
        tmp_path_factory.mktemp("ij"), job, IntervalJoinOp, events, disorder, rng, restart_at
    )
    got = Counter((v["key"], v["left"]["id"], v["right"]["id"]) for _, v, _, _ in rig.collect.rows)
    want = Counter(
        (ka, ia, ib)
        for sa, ka, ta, ia in events
        if sa == 0
        for sb, kb, tb, ib in events
        if sb == 1 and kb == ka and ta + lower <= tb <= ta + upper
    )
    assert got == want
    assert all(t == max(v["left"]["t"], v["right"]["t"]) for _, v, t, _ in rig.collect.rows)
    rig.db.close()


def test_interval_join_state_goes_once_the_watermark_passes_what_it_can_match(tmp_path):
    job = two_stream_job(lambda a, b: a.interval_join(b, lower=-0.01, upper=0.005, name="j"))
    rig = TwoSidedRig(tmp_path, job, IntervalJoinOp)
    skey = state_key(0, b"x", 128)
    rig.feed([("x", [0, {"id": 1, "t": 100}], 100, 0), ("x", [1, {"id": 2, "t": 96}], 96, 1)], 0)
    assert len(rig.collect.rows) == 1
    rig.op.advance(104, 0)
    assert rig.ctx.state.get("j.records", skey) is not None, "both may still match"
    rig.op.advance(105, 0)
    kept = rig.ctx.state.get("j.records", skey)
    assert kept["l"] == [] and len(kept["r"]) == 1, "left 100 matched up to 105, right 96 to 106"
    rig.op.advance(106, 0)
    assert rig.ctx.state.get("j.records", skey) is None
    rig.feed([("x", [0, {"id": 3, "t": 99}], 99, 2)], 105)
    assert rig.ctx.late_count == 1, "behind the watermark: late, not joined"
    rig.db.close()


def test_window_joins_are_checked_when_defined():
    job = Job("wj")
    a = job.source("a").key_by()
    b = job.source("b").key_by()
    with pytest.raises(JobDefinitionError, match="how='right'"):
        a.join(b, how="right")
    with pytest.raises(JobDefinitionError, match="cannot be joined with itself"):
        a.join(a)
    with pytest.raises(JobDefinitionError, match="not supported for joins"):
        a.join(b).window(Session(gap=1), allowed_lateness=5)
    with pytest.raises(JobDefinitionError, match="lower must not exceed upper"):
        a.interval_join(b, lower=2, upper=1)
    job = two_stream_job(
        lambda a, b: a.join(b, how="full").window(Tumbling(seconds=10)).apply(name="j")
    )
    plan = compile_plan(job, "g")
    assert "j: window_join how=full Tumbling(seconds=10) apply of key_by-2, key_by-4" in (
        plan.describe()
    )


def test_a_late_record_within_allowed_lateness_emits_what_it_adds(tmp_path):
    job = two_stream_job(
        lambda a, b: (
            a.join(b, how="full")
            .window(Tumbling(seconds=0.02), allowed_lateness=0.05)
            .apply(lambda left, right: (left and left["id"], right and right["id"]), name="j")
        )
    )
    rig = TwoSidedRig(tmp_path, job, WindowJoinOp)
    rig.feed([("x", [0, {"id": 1}], 5, 0), ("y", [1, {"id": 2}], 6, 1)], 25)
    rows = [v for _, v, _, _ in rig.collect.rows]
    assert sorted(rows, key=str) == [(1, None), (None, 2)], "outer rows (keys in any order)"
    rig.feed([("x", [1, {"id": 3}], 7, 2), ("y", [1, {"id": 4}], 8, 3)], 30)
    assert [v for _, v, _, _ in rig.collect.rows][2:] == [(1, 3), (None, 4)], "late: its rows"
    rig.op.advance(69, 0)
    rig.feed([("x", [0, {"id": 5}], 9, 4)], 69)
    assert rig.ctx.late_count == 1, "past the allowed lateness: late, dropped"
    assert len(rig.collect.rows) == 4
    rig.db.close()


# -- the job tester runs them too -----------------------------------------------------------


def test_the_job_tester_runs_a_table_join_as_of_event_time():
    tester = JobTester(table_join_job("left"), start_time=0)
    tester.send("customers", {"city": "Oslo"}, key="ann", timestamp=1_000)
    tester.send("orders", {"id": 1, "customer": "ann", "ts": 1_500})
    tester.send("customers", {"city": "Rome"}, key="ann", timestamp=2_000)
    tester.send("orders", {"id": 2, "customer": "ann", "ts": 2_500})
    tester.send("customers", None, key="ann", timestamp=3_000)
    tester.send("orders", {"id": 3, "customer": "ann", "ts": 3_500})
    tester.advance_watermark(10_000)
    assert tester.output("out") == [
        {"order": 1, "city": "Oslo"},
        {"order": 2, "city": "Rome"},
        {"order": 3, "city": None},
    ]


def test_the_job_tester_gives_a_rule_to_every_slot_sharing_a_partition():
    tester = JobTester(broadcast_job(), slots=3, start_time=0)
    tester.send("rules", {"name": "r", "first": "circle", "second": "star"})
    for n, user in enumerate(["ann", "bob", "cy", "dan", "eve", "fay"]):
        tester.send("events", {"n": 2 * n, "user": user, "shape": "circle"}, key=user)
        tester.send("events", {"n": 2 * n + 1, "user": user, "shape": "star"}, key=user)
    assert sorted(m["n"] for m in tester.output("out")) == [1, 3, 5, 7, 9, 11]


def test_a_record_whose_join_state_cannot_be_stored_changes_nothing(tmp_path):
    rig = JoinRig(tmp_path, "left")
    skey = state_key(0, b"a", 128)
    rig.feed([("a", [1, {"city": "x"}], 10, 0)], 5)
    before = copy.deepcopy(rig.ctx.state.get("enrich.rows", skey))
    rig.feed([("a", [0, {"id": 2**70}], 20, 1), ("a", [1, {"city": 2**70}], 30, 2)], 5)
    assert [reason for reason, _, _ in rig.ctx.failed] == ["state", "state"]
    assert rig.ctx.state.get("enrich.rows", skey) == before, "neither changed the key's state"
    rig.db.close()


class Poison(KeyedBroadcastProcessFunction):
    """A broadcast record sets every key's state to what it carries."""

    def process_element(self, value, ctx):
        ctx.value_state("v").update(value)

    def process_broadcast_element(self, value, ctx):
        ctx.broadcast_state("last").put("value", value)
        ctx.apply_to_keyed_state(lambda key, keyed: keyed.value_state("v").update(value))


def test_a_broadcast_record_whose_changes_cannot_all_be_stored_changes_nothing(tmp_path):
    job = Job("p")
    rules = job.source("rules").broadcast_state()
    job.source("in").key_by().connect(rules).process(Poison(), name="p").sink("out")
    node = next(s.op for s in compile_plan(job, "g").stateful)
    db = StateStore(tmp_path / "db", states_of(node))
    ctx = JoinCtx(EpochBuffer(db, {s: JsonSerde() for s in states_of(node)}))
    op = BroadcastProcessOp(node, ctx, 128, "t")
    op.out = Collect()
    op.own({0}, None)
    op.process(Batch("t", 0, [("a", [0, 1], 1, 0), ("b", [0, 2], 2, 1), (None, [1, 3], 3, 2)]))
    op.process(Batch("t", 0, [(None, [1, 2**70], 4, 3)]))
    assert [reason for reason, _, _ in ctx.failed] == ["state"]
    assert ctx.state.get(op.broadcast, partition_key(0)) == {"last": {"value": 3}}
    values = [ctx.state.get(op.state, state_key(0, k, 128))["v"]["v"] for k in (b"a", b"b")]
    assert values == [3, 3], "the keys visited before the refusal are put back"
    db.close()
