"""Unit tests of pure logic: key groups, slot routing, config, the job API, operator chains."""

from __future__ import annotations

import socket
import sys
import zlib
from unittest import mock

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes import Slots
from weir import Job, JobDefinitionError
from weir.operators.build import build_chain
from weir.operators.chain import Barrier, Batch, DirectOutput
from weir.operators.formats import JSON
from weir.operators.fused import FusedChain
from weir.operators.keyed import AggregateOp
from weir.operators.physical import compile_plan
from weir.operators.plan import (
    ErrorPolicy,
    HashExchange,
    Repartition,
    RepartitionSource,
    Source,
    Window,
)
from weir.service.config import WorkerConfig, load_config
from weir.service.exceptions import ConfigError
from weir.service.router import KEY_GROUPS, PINNED, SlotRouter
from weir.service.slots import _operator_in
from weir.service.topics import CLOCK_MARGIN_MS, TopicLimits
from weir.state.epoch import EpochBuffer
from weir.state.keygroups import key_group, key_group_range, slot_of_key_group, slot_table
from weir.state.serde import JsonSerde
from weir.state.store import StateStore

NOW_MS = 1_800_000_000_000

# -- key groups ---------------------------------------------------------------


@given(st.binary(max_size=64), st.integers(1, 64), st.integers(64, 4096))
def test_key_group_and_slot_are_stable_and_in_range(key, slots, max_groups):
    g = key_group(key, max_groups)
    assert 0 <= g < max_groups
    assert g == key_group(bytes(key), max_groups), "same bytes, same group"
    s = slot_of_key_group(g, slots, max_groups)
    assert 0 <= s < slots
    assert g in key_group_range(s, slots, max_groups)


@given(st.integers(1, 128))
def test_slots_own_contiguous_ranges_covering_all_key_groups(slots):
    ranges = [key_group_range(s, slots) for s in range(slots)]
    assert [g for r in ranges for g in r] == list(range(128))
    assert all(len(r) in (128 // slots, -(-128 // slots)) for r in ranges), "balanced"
    assert slot_table(slots) == [s for s, r in enumerate(ranges) for _ in r]


def test_key_group_is_crc32_not_pythons_salted_hash():
    assert key_group(b"sensor1") == zlib.crc32(b"sensor1") % 128


# -- slot routing ---------------------------------------------------------------


def tps(n, topic="t"):
    return [(topic, p) for p in range(n)]


def test_router_pins_balanced_when_partitions_cover_slots():
    r = SlotRouter(3, 128)
    r.reassign(tps(8))
    assert r.mode == PINNED
    loads = [list(r.pins.values()).count(s) for s in range(3)]
    assert sorted(loads) == [2, 3, 3]


def test_router_is_sticky_across_assignment_changes():
    r = SlotRouter(4, 128)
    r.reassign(tps(8))
    before = dict(r.pins)
    r.reassign(tps(10))  # two partitions added
    assert all(r.pins[tp] == s for tp, s in before.items()), "existing pins stay"
    assert not r.moves(tps(10))
    kept = [tp for tp in tps(10) if tp[1] not in (0, 1)]
    r.reassign(kept)  # two revoked
    assert all(r.pins[tp] == before.get(tp, r.pins[tp]) for tp in kept)


def test_router_rebalances_after_revocations_empty_a_slot():
    r = SlotRouter(2, 128)
    r.reassign(tps(4))
    slot0 = [tp for tp, s in r.pins.items() if s == 0]
    r.reassign([tp for tp in tps(4) if tp not in slot0] + [("t", 9), ("t", 10)])
    loads = [list(r.pins.values()).count(s) for s in range(2)]
    assert loads == [2, 2]


def test_router_uses_key_groups_when_fewer_partitions_than_slots():
    r = SlotRouter(4, 128)
    r.reassign(tps(2))
    assert r.mode == KEY_GROUPS
    assert r.moves(tps(5)), "switching to pinned moves partitions: the worker drains first"


class Msg:
    def __init__(self, topic, partition, offset, key, value=b"{}", headers=None):
        self._t, self._p, self._o, self._k, self._v = topic, partition, offset, key, value
        self._h = headers

    def headers(self):
        return self._h

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def key(self):
        return self._k

    def value(self):
        return self._v

    def timestamp(self):
        return (1, 1000 + self._o)

    def error(self):
        return None


def test_key_group_routing_keeps_keys_on_one_slot_in_order():
    r = SlotRouter(4, 128)
    r.reassign(tps(1))
    msgs = [Msg("t", 0, i, f"k{i % 40}".encode()) for i in range(200)]
    msgs += [Msg("t", 0, 200 + i, None) for i in range(40)]
    per_slot, counts, control = r.route(msgs)
    assert counts == {("t", 0): 240} and control == []
    assert r.positions == {("t", 0): 240}
    seen = {}
    for slot, batches in enumerate(per_slot):
        for batch in batches:
            offsets = [m.offset() for m in batch.elems]
            assert offsets == sorted(offsets)
            for m in batch.elems:
                if m.key() is not None:
                    assert seen.setdefault(m.key(), slot) == slot
    assert sum(len(b.elems) for bs in per_slot for b in bs) == 240
    assert sum(1 for bs in per_slot if bs) >= 3, "keys spread over the slots"
    keyless = [[m.offset() for b in bs for m in b.elems if m.key() is None] for bs in per_slot]
    assert sorted(map(len, keyless)) == [0, 0, 0, 40], "a partition's keyless records: one slot"


def test_keyless_records_keep_their_partitions_order_over_batches():
    """Keyless records feeding a key_by(fn) or a broadcast side must stay in order: every
    batch of one partition sends them to the same slot, and partitions spread."""
    r = SlotRouter(3, 128)
    r.reassign(tps(2))
    slots_of: dict[int, set[int]] = {0: set(), 1: set()}
    for start in range(0, 300, 30):
        msgs = [Msg("t", p, start + i, None) for p in (0, 1) for i in range(30)]
        per_slot, _, _ = r.route(msgs)
        for slot, batches in enumerate(per_slot):
            for batch in batches:
                slots_of[batch.partition].add(slot)
    assert all(len(s) == 1 for s in slots_of.values()), slots_of
    assert slots_of[0] != slots_of[1], "two partitions' keyless records on two slots"


def test_the_router_takes_control_records_out_of_topics_that_carry_them():
    r = SlotRouter(2, 128, control_topics=["rep"])
    r.reassign([("rep", 0), ("rep", 1), ("t", 0)])
    mark = [("weir.watermark", b"1")]
    msgs = [
        Msg("rep", 0, 0, b"a"),
        Msg("rep", 0, 1, None, b"c1", mark),
        Msg("rep", 0, 2, b"b"),
        Msg("rep", 1, 5, None, b"c2", mark),  # a batch of nothing else
        Msg("t", 0, 7, b"x", b"{}", mark),  # headers elsewhere are data
    ]
    per_slot, counts, control = r.route(msgs)
    assert control == [(("rep", 0), b"c1"), (("rep", 1), b"c2")], "in order, per partition"
    routed = {(b.topic, b.partition): [m.offset() for m in b.elems] for bs in per_slot for b in bs}
    assert routed == {("rep", 0): [0, 2], ("t", 0): [7]}, "no slot sees a control record"
    assert counts == {("rep", 0): 2, ("t", 0): 1}
    assert r.positions == {("rep", 0): 3, ("rep", 1): 6, ("t", 0): 8}, "committed past them"


# -- config -----------------------------------------------------------------------


def test_config_precedence_flag_env_file_default(tmp_path):
    conf = tmp_path / "weir.toml"
    conf.write_text(
        'slots = 3\nbootstrap = "file:1"\ngroup = "from-file"\n'
        '[kafka]\n"socket.timeout.ms" = 5000\n'
    )
    cfg = load_config(
        {"config": str(conf), "slots": "5", "bootstrap": None},
        {"WEIR_BOOTSTRAP": "env:2", "WEIR_KAFKA_SASL_MECHANISM": "PLAIN"},
    )
    assert cfg.slots == 5 and cfg.bootstrap == "env:2" and cfg.group == "from-file"
    assert cfg.kafka == {"socket.timeout.ms": "5000", "sasl.mechanism": "PLAIN"}
    assert cfg.redacted()["kafka"] == {"socket.timeout.ms": "***", "sasl.mechanism": "***"}
    assert load_config({}, {}).slots == WorkerConfig().slots == 1


@pytest.mark.parametrize(
    "flags, env, toml, message",
    [
        ({"slots": "zero"}, {}, "", "--slots='zero': expected a whole number"),
        ({}, {"WEIR_CHECKPOINT_INTERVAL_MS": "1"}, "", "WEIR_CHECKPOINT_INTERVAL_MS"),
        ({}, {}, "slotz = 2\n", "config file key 'slotz' is unknown"),
        ({}, {}, 'slots = "2"\n', "expected a whole number"),
        ({"bootstrap": "nohostport"}, {}, "", "expected host:port"),
        ({"guarantee": "maybe"}, {}, "", "expected one of exactly-once, at-least-once"),
    ],
)
def test_config_errors_name_the_key(tmp_path, flags, env, toml, message):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config({**flags, "config": str(path)}, env)


# -- job API ------------------------------------------------------------------------


def test_job_api_validates_at_definition_time():
    with pytest.raises(JobDefinitionError, match="job name 'a b'"):
        Job("a b")
    job = Job("ok")
    with pytest.raises(JobDefinitionError, match="value='avro'"):
        job.source("in", value="avro")
    with pytest.raises(JobDefinitionError, match=r"map\(\) needs a function"):
        job.source("in").map(3)
    nosink = Job("nosink")
    nosink.source("in").map(str)
    with pytest.raises(JobDefinitionError, match="no sink"):
        nosink.validate()


def test_plan_describes_exchanges():
    job = Job("p")
    job.source("in").key_by(lambda r: r["k"]).map(str).rebalance().sink("out")
    plan = compile_plan(job, "p")
    text = plan.describe()
    assert "key_by (hash exchange)" in text and "partition rebalance" in text
    assert plan.source_topics == ["in"] and plan.sink_topics == ["out"]


# -- operator chains with a fake slot context ------------------------------------------


class FakeSlot:
    """A slot context; with ``direct``, fused chains produce record by record."""

    def __init__(self, slot=0, slots=1, direct=False):
        self.slot, self.slots = slot, slots
        self.state = None
        self.registry = None
        self.produced, self.failed, self.sent, self.times = [], [], [], []
        self.fused = direct

    def produce(self, topic, rows, batch):
        self.produced.extend((topic, k, v) for k, v, _, _ in rows)

    def direct(self, topic):
        if not self.fused:
            return None

        def produce(topic, value, key, partition, on_delivery, callback, timestamp):
            self.produced.append((topic, key, value))

        inf = float("inf")
        return DirectOutput(produce, None, KeyError, inf, -inf, inf, None, lambda n: None)

    def fail(self, operator, reason, batch, elem, exc):
        self.failed.append((operator, reason, elem[3]))

    def send(self, slot, target, item):
        self.sent.append((slot, target, item))

    def observe_time(self, topic, partition, max_timestamp):
        self.times.append((topic, partition, max_timestamp))


@pytest.mark.parametrize("fused", [False, True], ids=["staged", "fused"])
def test_chain_resumes_after_a_failing_record_and_calls_functions_once(fused):
    calls = []

    def f(r):
        calls.append(r["n"])
        if r["n"] == 3:
            raise ValueError("boom")
        return r["n"] * 10

    job = Job("c")
    job.source("in").map(f).filter(lambda x: x != 20).sink("out")
    ctx = FakeSlot(direct=fused)
    chain = build_chain(compile_plan(job, "c").roots, ctx, 128)
    assert isinstance(chain.sources["in"], FusedChain), "a line of map and filter fuses"
    msgs = [Msg("in", 0, i, None, f'{{"n": {i}}}'.encode()) for i in range(6)]
    msgs.insert(2, Msg("in", 0, 99, None, b"not json"))
    chain.sources["in"].process(Batch("in", 0, msgs))
    assert calls == [0, 1, 2, 3, 4, 5], "each record once, in order"
    assert [v for _, _, v in ctx.produced] == [b"0", b"10", b"40", b"50"]
    assert ctx.failed == [("source-in", "decode", 99), ("map-2", "function", 3)]


def test_key_by_exchange_routes_by_key_group_and_forwards_barriers():
    job = Job("x")
    job.source("in").key_by(lambda r: r["k"]).sink("out")
    ctx = FakeSlot(0, 4)
    chain = build_chain(compile_plan(job, "x").roots, ctx, 128)
    msgs = [Msg("in", 0, i, None, f'{{"k": "k{i % 9}"}}'.encode()) for i in range(90)]
    chain.sources["in"].process(Batch("in", 0, msgs))
    table = slot_table(4)
    for slot, _target, batch in ctx.sent:
        for key, _, _, _ in batch.elems:
            assert table[key_group(key.encode())] == slot
    assert sum(len(b.elems) for _, _, b in ctx.sent) == 90
    ctx.sent.clear()
    chain.sources["in"].on_barrier(Barrier(7))
    assert sorted(s for s, _, b in ctx.sent if isinstance(b, Barrier)) == [0, 1, 2, 3]


# -- windows ----------------------------------------------------------------------


@given(st.integers(0, 10**13), st.integers(1, 100), st.integers(1, 100))
def test_sliding_assigns_every_window_containing_the_timestamp(ts, size_s, slide_s):
    from weir.operators.windows import Sliding

    size, slide = size_s * 1000, min(slide_s, size_s) * 1000
    windows = Sliding(seconds=size / 1000, every=slide / 1000).assign(ts)
    assert all(s <= ts < e and e - s == size and s % slide == 0 for s, e in windows)
    expected = sorted(range(ts - ts % slide, ts - size, -slide))  # slide-aligned starts
    assert [s for s, _ in windows] == expected, "exactly the windows that contain ts"


def windowed_job(name: str = "r") -> Job:
    """in -> filter -> key_by(fn) -> window (late topic) -> sink: keyed state behind a key_by."""
    from weir import Tumbling

    job = Job(name, on_error="skip", max_key_groups=64)
    (
        job.source("in", timestamp=lambda r: r["ts"], max_out_of_orderness=2, idle_timeout=5)
        .filter(bool)
        .key_by(lambda r: r["k"], partitions=3, name="by-k")
        .window(Tumbling(seconds=1), late_topic="late")
        .aggregate(n="count", name="counts")
        .sink("out")
    )
    return job


def shape(job: Job) -> list[tuple[int, str, list[int]]]:
    """The recorded dataflow: every operator with the ids of the operators it feeds."""
    flow = job.dataflow
    return [(op.id, op.name, [c.id for c in flow.children(op)]) for op in flow.ops()]


def test_repartition_plan_for_key_by_before_state():
    plan = compile_plan(windowed_job(), "grp")
    assert plan.user_source_topics == ["in"]
    assert plan.repartition_topics == ["grp.by-k.repartition"]
    assert plan.source_topics == ["grp.by-k.repartition", "in"]
    assert plan.sink_topics == ["late", "out"], "a window's late topic is written too"
    user, internal = plan.roots
    (key_by,) = user.children[0].children
    assert isinstance(key_by.op, Repartition) and key_by.children == (), "the branch ends there"
    assert key_by.op.topic == "grp.by-k.repartition"
    assert [n.op.name for n in internal.walk()] == [
        "source-grp.by-k.repartition",
        "counts",
        "sink-out",
    ]
    stateless = Job("s")
    stateless.source("in").key_by(lambda r: r["k"]).map(str).sink("out")
    plan = compile_plan(stateless, "g")
    assert plan.repartitions == (), "no state after it: an in-worker exchange suffices"
    assert isinstance(plan.roots[0].children[0].op, HashExchange)


def test_compiled_plan_is_typed():
    plan = compile_plan(windowed_job(), "grp")
    assert (plan.job, plan.group, plan.max_key_groups) == ("r", "grp", 64)
    assert plan.on_error == ErrorPolicy.SKIP and plan.dlq_topic == "grp.dlq"
    source, internal = plan.sources
    assert isinstance(source, Source) and source.value is JSON
    assert source.timestamp({"ts": 7}) == 7
    assert (source.max_out_of_orderness, source.idle_timeout) == (2.0, 5)
    assert isinstance(internal, RepartitionSource)
    assert (internal.topic, internal.upstream, internal.partitions) == (
        "grp.by-k.repartition",
        "in",
        3,
    )
    (state,) = plan.stateful
    assert isinstance(state.op, Window) and state.name == "counts"
    assert state.input_topic == "grp.by-k.repartition", "state follows the repartition topic"
    assert state.states == ("counts.windows", "counts.watermark")
    assert state.changelog == "grp.counts.changelog"
    assert plan.event_time_sources == (source, internal), "the window's, and the one behind it"
    (channel,) = plan.watermark_channels
    assert (channel.upstream, channel.topic, channel.timed) == ("in", internal.topic, False)


def test_compile_plan_leaves_the_job_as_it_was():
    job = windowed_job()
    before = shape(job)
    first = compile_plan(job, "a")
    assert shape(job) == before, "the key_by still feeds the window in the job"
    second = compile_plan(job, "b")
    assert shape(job) == before
    assert first.repartition_topics == ["a.by-k.repartition"], "compiling again changed nothing"
    assert second.repartition_topics == ["b.by-k.repartition"]
    assert [s.changelog for s in second.stateful] == ["b.counts.changelog"]
    assert first.describe() == second.describe().replace("b.by-k", "a.by-k")
    assert first.stateful[0].op is second.stateful[0].op, "operators are shared, immutably"


def test_chained_key_bys_repartition_twice_in_walk_order():
    job = Job("n")
    src = job.source("in", idle_timeout=1)
    (
        src.key_by(lambda r: r["a"], name="by-a")
        .reduce(lambda x, y: y, name="first")
        .key_by(lambda r: r["b"], name="by-b")
        .reduce(lambda x, y: y, name="second")
        .sink("out")
    )
    src.key_by(lambda r: r["c"], name="by-c").reduce(lambda x, y: y, name="third").sink("out2")
    plan = compile_plan(job, "g")
    assert [s.topic for s in plan.sources] == [
        "in",
        "g.by-a.repartition",
        "g.by-b.repartition",
        "g.by-c.repartition",
    ], "job sources first, then repartition sources depth first"
    assert [s.upstream for s in plan.repartitions] == ["in", "g.by-a.repartition", "in"]
    assert [(s.name, s.input_topic) for s in plan.stateful] == [
        ("first", "g.by-a.repartition"),
        ("second", "g.by-b.repartition"),
        ("third", "g.by-c.repartition"),
    ]
    assert len({n.op.id for root in plan.roots for n in root.walk()}) == sum(
        1 for root in plan.roots for _ in root.walk()
    ), "operator ids stay unique: exchanges are addressed by them"


def test_watermark_channels_lead_back_from_every_timer_through_chained_repartitions():
    from weir import Tumbling

    job = Job("w")
    src = job.source("in", timestamp=lambda r: r["ts"], idle_timeout=1)
    (
        src.key_by(lambda r: r["a"], name="by-a")
        .window(Tumbling(seconds=1))
        .aggregate(n="count", name="w1")
        .key_by(lambda r: r["key"], name="by-b")
        .window(Tumbling(seconds=10))
        .aggregate(n="count", name="w2")
        .sink("out")
    )
    src.key_by(lambda r: r["c"], name="by-c").reduce(lambda x, y: y, name="r").sink("out2")
    plan = compile_plan(job, "g")
    assert [(c.upstream, c.topic, c.timed) for c in plan.watermark_channels] == [
        ("in", "g.by-a.repartition", False),
        ("g.by-a.repartition", "g.by-b.repartition", True),  # w1's results, stamped by it
    ], "by-c feeds no timer: it carries no watermarks"
    assert [s.topic for s in plan.event_time_sources] == [
        "in", "g.by-a.repartition", "g.by-b.repartition"
    ]  # fmt: skip

    job = Job("v")
    (
        job.source("in", timestamp=lambda r: r["ts"])
        .key_by(lambda r: r["a"], name="by-a")
        .reduce(lambda x, y: y, name="latest")
        .key_by(lambda r: r["b"], name="by-b")
        .window(Tumbling(seconds=1))
        .aggregate(n="count", name="w")
        .sink("out")
    )
    plan = compile_plan(job, "g")
    assert [(c.upstream, c.topic, c.timed) for c in plan.watermark_channels] == [
        ("in", "g.by-a.repartition", False),
        ("g.by-a.repartition", "g.by-b.repartition", False),
    ], "the first repartition carries the watermark on to the one the window reads"
    chain = build_chain(plan.roots, FakeSlot(), 64)
    assert chain.sources["in"].track_time, "its watermark is announced downstream"


def test_compile_plan_refuses_an_unrunnable_job():
    job = Job("bad")
    job.source("in").rebalance().key_by().reduce(lambda a, b: b).sink("out")
    with pytest.raises(JobDefinitionError, match="moves records between slots"):
        compile_plan(job, "g")


def test_repartition_chain_writes_key_value_envelopes_to_the_groups_topic():
    plan = compile_plan(windowed_job(), "grp")
    ctx = FakeSlot()
    chain = build_chain(plan.roots, ctx, 64)
    assert set(chain.sources) == {"in", "grp.by-k.repartition"}
    msgs = [Msg("in", 0, i, None, f'{{"k": "k{i}", "ts": {i}}}'.encode()) for i in range(3)]
    chain.sources["in"].process(Batch("in", 0, msgs))
    assert ctx.produced == [
        ("grp.by-k.repartition", f"k{i}".encode(), f'["k{i}",{{"k":"k{i}","ts":{i}}},{i}]'.encode())
        for i in range(3)
    ]
    assert ctx.times == [("in", 0, 2)], "the source's watermark is announced downstream"


# -- sinks: what a topic's broker accepts ---------------------------------------------

LIMITS = st.builds(
    TopicLimits,
    st.none() | st.integers(1, 40),
    st.none() | st.integers(0, 10_000),
    st.none() | st.integers(0, 10_000),
)
ROWS = st.lists(
    st.tuples(
        st.none() | st.binary(max_size=8),
        st.binary(max_size=40),
        st.integers(0, 100),
        st.sampled_from([-1, 0]) | st.integers(NOW_MS - 20_000, NOW_MS + 20_000),
    ),
    max_size=12,
)


@settings(deadline=None)
@given(LIMITS, ROWS)
def test_a_sink_keeps_exactly_the_rows_the_topic_accepts(limits, rows):
    """The batch-wide checks (sizes and timestamps found in C) keep the same rows as
    asking `TopicLimits.refusal` row by row, and dead-letter the others."""
    job = Job("limits")
    job.source("in").sink("out")
    slots = Slots(job, 1)
    slot = slots[0]
    slot.limits = {"out": limits}
    batch = Batch("in", 0, [])
    with mock.patch("weir.service.slots.time.time", return_value=NOW_MS / 1000):
        kept = slot._accepted("out", rows, batch, limits)
    expected = [r for r in rows if limits.refusal(r[0], r[1], r[3], NOW_MS) is None]
    assert kept == expected
    assert len(slots.producer.to("limits.dlq")) == len(rows) - len(expected)


# -- keyed state ------------------------------------------------------------------------


class _Collect:
    def __init__(self) -> None:
        self.values: list = []

    def process(self, batch: Batch) -> None:
        self.values.extend(v for _, v, _, _ in batch.elems)

    def on_barrier(self, barrier: Barrier) -> None:
        pass


def test_keyed_state_follows_key_bytes_whatever_python_thinks_equal(tmp_path):
    """1, "1" and b"1" encode alike and share one count; 1.0 and True equal 1 in Python
    but encode apart, so they count on their own; a list key works uncached. Storage
    keys cached within an epoch must not change any of that."""
    job = Job("keys")
    job.source("in").key_by(lambda r: r["k"]).aggregate(count="count", name="counts").sink("o")
    (state,) = compile_plan(job, "keys").stateful
    store = StateStore(tmp_path, state.states)
    ctx = mock.Mock(state=EpochBuffer(store, {s: JsonSerde() for s in state.states}))
    ctx.fail.side_effect = AssertionError
    op = AggregateOp(state.op, ctx, 128)
    op.out = collect = _Collect()
    keys = [1, 1.0, True, "1", b"1", 1, 1.0, [1, 2], [1, 2]]
    try:
        for epoch in range(2):
            op.process(Batch("in", 0, [(k, {}, 0, i) for i, k in enumerate(keys)]))
            op.on_barrier(Barrier(epoch + 1))
            assert op.skeys.partitions == {}, "the cache lives for one epoch"
    finally:
        store.close()
    assert collect.values[4] == {"key": "1", "count": 3}, "bytes keys come out as text"
    assert list(collect.values[0]) == ["key", "count"], "the key first"
    counts = [v["count"] for v in collect.values]
    assert counts == [1, 1, 1, 2, 3, 4, 2, 1, 2, 5, 3, 2, 6, 7, 8, 4, 3, 4]  # two epochs


# -- the fused chain: the staged operators' results, record by record -----------------


def _fused_job(keyed: bool = False) -> Job:
    """source -> filter -> map -> sink: a line that fuses (with ``keyed``, a key_by()
    after the source keeps it staged: the sink alone produces directly). Values say how
    they fail."""

    def keep(r):
        if r.get("bad") == "filter":
            raise ValueError("filter raised")
        return r.get("drop") is None

    def double(r):
        if r.get("bad") == "map":
            raise ValueError("map raised")
        if r.get("bad") == "encode":
            return {1j}  # orjson cannot write a complex number in a set
        return {**r, "x": r["n"] * 2, "pad": "p" * r.get("pad", 0)}

    job = Job("fused")
    stream = job.source("in")
    if keyed:
        stream = stream.key_by()
    stream.filter(keep, name="keep").map(double, name="double").sink("out")
    return job


RECORD = st.one_of(
    st.builds(lambda n, pad: {"n": n, "pad": pad}, st.integers(0, 99), st.integers(0, 90)),
    st.builds(lambda n: {"n": n, "drop": True}, st.integers(0, 99)),
    st.builds(lambda b: {"n": 0, "bad": b}, st.sampled_from(["filter", "map", "encode"])),
    st.just(b"not json"),
)


# Record timestamps are 1000 + offset ms and the clock reads 1010 ms, so a limit of
# CLOCK_MARGIN_MS + d refuses timestamps from about d ms ahead or behind.
STAMP_LIMIT = st.none() | st.integers(-20, 40).map(lambda d: CLOCK_MARGIN_MS + d)


@pytest.mark.parametrize("keyed", [False, True], ids=["fused-chain", "direct-sink"])
@settings(deadline=None, max_examples=300)  # slots per example: slow on a loaded machine
@given(
    st.lists(st.lists(RECORD, max_size=8), max_size=5),
    st.builds(TopicLimits, st.none() | st.integers(40, 160), STAMP_LIMIT, STAMP_LIMIT),
    st.integers(0, 4),
)
def test_direct_production_writes_what_the_staged_operators_write(
    keyed, batches, limits, barrier_at
):
    """A fused chain, and a sink producing directly, write what the staged operators
    and rows (`Slot.produce`) write: the same outputs in order and dead letters (key,
    value, headers; the staged operators write a batch's dead letters stage by stage,
    direct production in record order), whatever fails where; outputs the topic
    refuses (too large, timestamps out of its range) and outputs held after a barrier
    included."""
    runs = []
    for direct in (True, False):
        slots = Slots(_fused_job(keyed), 1)
        slot = slots[0]
        slot.limits = {"out": limits}
        head = slot.chain.sources["in"]
        assert isinstance(head, FusedChain) != keyed
        if not direct:
            slot.direct = lambda topic: None  # the staged operators' rows, as before

        offset = 0
        for b, values in enumerate(batches):
            if b == barrier_at:
                slots.barrier(1)
            msgs = []
            for v in values:
                raw = v if isinstance(v, bytes) else orjson.dumps(v)
                key = None if offset % 4 == 0 else b"k" * (offset % 29)
                msgs.append(_RawMsg("in", 0, offset, key, raw))
                offset += 1
            slots.fetch(0, "in", 0, msgs)
            with mock.patch("weir.service.slots.time.time", return_value=1.010):
                slots.run(0)
        written = [(r.topic, r.key, r.value, r.headers) for r in slots.producer.records]
        held = [(topic, k, v, h or None, ts) for topic, k, v, h, ts, _ in slot.held]
        runs.append(
            (
                [r[1:3] for r in written if r[0] == "out"],
                sorted((r[1:] for r in written if r[0] != "out"), key=repr),
                [r[1:] for r in held if r[0] == "out"],
                sorted((r[1:] for r in held if r[0] != "out"), key=repr),
            )
        )
    assert runs[0] == runs[1]


class _RawMsg(Msg):
    """A consumed message with raw value bytes (the fakes' Msg encodes a value)."""

    def __init__(self, topic, partition, offset, key, raw):
        super().__init__(topic, partition, offset, key, raw)


def test_a_slot_stuck_in_a_fused_function_names_that_function_and_record():
    """`Slot.stuck_in` reads the operator and the record off the slot thread's stack."""
    seen = []

    def lookup(r):
        seen.append(_operator_in(sys._getframe()))
        return r

    job = Job("stuck")
    job.source("in").map(lookup, name="slow-lookup").sink("out")
    slots = Slots(job, 1)
    assert isinstance(slots[0].chain.sources["in"], FusedChain)
    slots.fetch(0, "in", 0, [_RawMsg("in", 0, 41, None, b"{}")])
    slots.run(0)
    assert seen == [("slow-lookup", 41)]


def test_a_taken_http_port_is_one_line_naming_it():
    """A worker whose --http-port is taken stops with a ConfigError naming the port,
    not a traceback."""
    from weir.service.exceptions import ConfigError
    from weir.service.http import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--http-port {port}: cannot listen on"):
            serve(None, "127.0.0.1", port)


def test_direct_output_retries_a_full_queue_and_dead_letters_refusals():
    """The rare paths of a direct send: a full queue is drained and the record produced
    again; a record the producer refuses, or the topic's bounds, is dead-lettered."""

    class Refused(Exception):
        pass

    sent, polls, failed = [], [], []
    answers = [BufferError(), None, Refused("too big")]

    def produce(topic, data, key, _p, _d, _c, ts):
        answer = answers.pop(0)
        if answer is not None:
            raise answer
        sent.append((topic, data, key, ts))

    def fail(operator, reason, _batch, elem, exc):
        failed.append((operator, reason, elem, type(exc).__name__))

    direct = DirectOutput(
        produce, polls.append, Refused, 100, 0, 2_000,
        lambda k, v, t: None if t == 50 else f"timestamp {t} out of range", lambda n: None,
    )  # fmt: skip
    direct.retry(BufferError(), "out", b"k", b"v", 7, 3, None, fail)
    assert sent == [("out", b"v", b"k", 7)] and polls == [0.05, 0.05], "drained, then sent once"
    direct.retry(BufferError(), "out", b"k", b"w", -1, 4, None, fail)
    assert failed == [("sink-out", "produce", (b"k", b"w", 0, 4), "Refused")]
    assert not direct.refuse("out", None, b"x", 50, 5, None, fail), "fits after all"
    assert direct.refuse("out", None, b"x", 9_000, 6, None, fail)
    assert failed[-1] == ("sink-out", "timestamp", (None, b"x", 9_000, 6), "ValueError")
