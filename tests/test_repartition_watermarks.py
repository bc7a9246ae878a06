"""Watermarks through repartition topics (weir/service/repartition_watermarks.py), without a
broker: what an upstream worker announces and when, what a repartition partition's
table holds, and how it travels in offset metadata. The tracker's rules over these
tables are in tests/test_watermarks.py, the checkpoint's step in test_protocols.py, the
end-to-end guarantee in test_event_time.py."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes import FakeProducer, Msg
from weir.operators.chain import Batch, RepartitionSourceOp
from weir.operators.physical import WatermarkChannel
from weir.operators.plan import RepartitionSource
from weir.operators.timers import NO_TIME
from weir.service.repartition_watermarks import (
    HEADER,
    MAX_UPSTREAM,
    METADATA_LIMIT,
    Announced,
    UpstreamTable,
    WatermarkChannels,
)

R = "g.by-tag.repartition"
PARTITIONS = {"in": 4, R: 3}


class Values:
    """What the tracker says at the barrier: set by the test."""

    def __init__(self) -> None:
        self.partitions: dict[tuple[str, int], Announced] = {}
        self.topics: dict[str, int] = {}

    def __call__(self):
        return dict(self.partitions), dict(self.topics)


def channels(timed: bool = False) -> tuple[WatermarkChannels, Values]:
    values = Values()
    return WatermarkChannels([WatermarkChannel("in", R, timed)], dict(PARTITIONS), values), values


def announced(cp) -> dict[int, list]:
    """Per repartition partition written, the announcement's decoded value."""
    return {p: orjson.loads(v) for topic, p, v in cp.records if topic == R}


# -- upstream: what is announced, and when -----------------------------------------------------


def test_an_announcement_goes_into_every_repartition_partition_only_when_something_changed():
    ch, values = channels()
    values.partitions = {("in", 0): Announced(5_000, False), ("in", 2): Announced(NO_TIME, True)}
    cp = ch.checkpoint()
    want = {"t": "in", "n": 4, "w": [[0, 5_000, False], [2, NO_TIME, True]]}
    assert announced(cp) == {0: want, 1: want, 2: want}, "all of R's partitions, same news"
    ch.committed(cp)
    assert ch.checkpoint().records == [], "nothing new since the committed announcement"
    values.partitions[("in", 0)] = Announced(4_000, False)
    assert ch.checkpoint().records == [], "lower than announced (a rollback replays): no news"
    values.partitions[("in", 2)] = Announced(NO_TIME, False)
    assert announced(ch.checkpoint())[0]["w"][1] == [2, NO_TIME, False], "idle no longer"


def test_an_announcement_not_committed_is_made_again():
    ch, values = channels()
    values.partitions = {("in", 1): Announced(7_000, False)}
    assert len(ch.checkpoint().records) == 3
    assert len(ch.checkpoint().records) == 3, "the first one's commit failed: again"


def test_partitions_with_nothing_to_say_are_not_announced():
    ch, values = channels()
    values.partitions = {("in", 0): Announced(NO_TIME, False), ("other", 0): Announced(9, False)}
    assert ch.checkpoint().records == [], "no watermark and not idle; another topic's"


def test_behind_timers_the_announcement_is_held_to_the_topics_watermark():
    ch, values = channels(timed=True)
    values.partitions = {("in", 0): Announced(90_000, False), ("in", 1): Announced(10, True)}
    values.topics = {"in": 50_000}
    assert announced(ch.checkpoint())[0]["w"] == [[0, 50_000, False], [1, 10, True]]


def test_owning_a_partition_again_announces_it_afresh():
    ch, values = channels()
    values.partitions = {("in", 0): Announced(5_000, True)}
    ch.committed(ch.checkpoint())
    ch.forget([("in", 0)])
    assert len(ch.checkpoint().records) == 3, "given up and back: the downstream hears it again"


def test_control_records_are_marked_and_go_to_their_partition():
    ch, values = channels()
    values.partitions = {("in", 3): Announced(1, False)}
    producer = FakeProducer()
    ch.checkpoint().write(producer)
    assert [(r.topic, r.partition, r.key, r.header(HEADER)) for r in producer.records] == [
        (R, 0, None, "1"), (R, 1, None, "1"), (R, 2, None, "1")
    ]  # fmt: skip


def test_too_many_upstream_partitions_are_named_at_start():
    ch = WatermarkChannels([WatermarkChannel("in", R, False)], {"in": MAX_UPSTREAM + 1, R: 1})
    assert f"'in' has {MAX_UPSTREAM + 1} partitions" in ch.check()
    assert channels()[0].check() is None


def test_behind_a_union_a_partition_is_at_the_minimum_over_every_upstream_topic():
    """After a union of two topics both write into one repartition topic: each announces
    its own partitions, a partition keeps a table per topic, and its watermark is the
    minimum over both; the tables are committed and loaded together."""
    two = [WatermarkChannel("in", R, False), WatermarkChannel("other", R, False)]
    ch = WatermarkChannels(two, {"in": 2, "other": 1, R: 1})
    assert ch.check() is None
    ch.load((R, 0), None)
    assert ch.table((R, 0)).watermark() == NO_TIME, "nobody announced anything yet"
    ch.observe([control(0, (0, 500, False), (1, 400, False), n=2)])
    assert ch.table((R, 0)).watermark() == NO_TIME, "'other' has announced nothing: it holds"
    ch.observe([((R, 0), orjson.dumps({"t": "other", "n": 1, "w": [[0, 300, False]]}))])
    assert ch.table((R, 0)).watermark() == 300, "the lowest over both topics"
    ch.observe([((R, 0), orjson.dumps({"t": "other", "n": 1, "w": [[0, 350, True]]}))])
    assert ch.table((R, 0)).watermark() == 400, "an idle topic does not hold the other"
    assert ch.table((R, 0)).flushed() == 500 and ch.table((R, 0)).reached() == 350
    ch.observe([((R, 0), orjson.dumps({"t": "elsewhere", "n": 1, "w": [[0, 1, False]]}))])
    assert set(ch.table((R, 0)).tables) == {"in", "other"}, "a topic not written here: ignored"
    text = ch.checkpoint().metadata[(R, 0)]
    fresh = WatermarkChannels(two, {"in": 2, "other": 1, R: 1})
    fresh.load((R, 0), text)
    assert fresh.table((R, 0)).of("in").entries == ch.table((R, 0)).of("in").entries
    assert fresh.table((R, 0)).of("other").entries == [Announced(350, True)]
    big = WatermarkChannels(two, {"in": MAX_UPSTREAM, "other": 1, R: 1})
    assert f"have {MAX_UPSTREAM + 1} partitions" in big.check()


def test_each_upstream_topic_announces_its_own_partitions_into_a_shared_topic():
    two = [WatermarkChannel("in", R, False), WatermarkChannel("other", R, False)]
    values = {("in", 0): Announced(100, False), ("other", 0): Announced(200, False)}
    ch = WatermarkChannels(two, {"in": 1, "other": 1, R: 1}, lambda: (values, {}))
    marks = ch.checkpoint()
    assert sorted(orjson.loads(v)["t"] for _, _, v in marks.records) == ["in", "other"]
    assert marks.announced == {(R, "in", 0): Announced(100, False),
                               (R, "other", 0): Announced(200, False)}  # fmt: skip
    ch.committed(marks)
    assert ch.checkpoint().records == [], "nothing new on either topic: nothing written"


# -- downstream: the tables ------------------------------------------------------------------


def control(p: int, *entries: tuple[int, int, bool], n: int = 4) -> tuple[tuple[str, int], bytes]:
    return (R, p), orjson.dumps({"t": "in", "n": n, "w": [list(e) for e in entries]})


def test_control_records_update_the_table_of_their_partition():
    ch, _ = channels()
    ch.load((R, 0), None)
    assert ch.table((R, 0)).watermark() == NO_TIME, "nobody announced anything yet"
    ch.observe([control(0, (0, 100, False), (1, 300, False)), control(1, (2, 50, True))])
    ch.observe([control(0, (2, 200, False), (3, NO_TIME, True))])
    assert ch.table((R, 0)).of("in").entries == [
        Announced(100, False), Announced(300, False), Announced(200, False),
        Announced(NO_TIME, True),
    ]  # fmt: skip
    assert ch.table((R, 0)).watermark() == 100
    assert ch.table((R, 1)).watermark() == NO_TIME, "r-1 heard upstream 2 only"
    ch.observe([control(0, (5, 400, False), n=6)])
    assert len(ch.table((R, 0)).of("in").entries) == 6, "the upstream topic grew: its count travels"
    ch.observe([((R, 0), b"not json"), ((R, 0), b'{"w": 1}')])
    assert len(ch.table((R, 0)).of("in").entries) == 6, "a malformed one is skipped"


def test_a_table_is_committed_and_loaded_with_its_offset():
    ch, _ = channels()
    ch.load((R, 0), None)
    ch.observe([control(0, (0, 1_700_000_000_123, True), (1, 1_700_000_004_000, False))])
    text = ch.checkpoint().metadata[(R, 0)]
    assert len(text) < 100
    other, _ = channels()
    assert not other.loaded((R, 0)) and other.loaded(("in", 0)), "only channel partitions wait"
    other.load((R, 0), text)
    assert other.table((R, 0)).of("in").entries == ch.table((R, 0)).of("in").entries
    other.load((R, 0), "")  # a rollback to an offset committed without a table
    assert other.table((R, 0)).of("in").entries == [None] * 4
    other.load((R, 0), "someone else's metadata")
    assert other.table((R, 0)).watermark() == NO_TIME


ENTRY = st.one_of(
    st.none(),
    st.builds(Announced, st.integers(0, 253_402_300_799_999), st.booleans()),
    st.just(Announced(NO_TIME, True)),
)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(ENTRY, max_size=MAX_UPSTREAM))
def test_offset_metadata_keeps_every_table_exact_or_below_and_within_the_limit(entries):
    """Exact while it fits; otherwise every watermark rounded down (a lower bound only
    holds the downstream back until the next announcement), idleness and silence kept."""
    text = UpstreamTable(len(entries), entries).encode()
    assert len(text) <= METADATA_LIMIT
    back = UpstreamTable.decode(text, len(entries)).entries
    assert len(back) == len(entries)
    for got, had in zip(back, entries, strict=True):
        if had is None or had == Announced(NO_TIME, False):
            assert got is None
        else:
            assert got.idle == had.idle and got.watermark <= had.watermark
    if orjson.loads(text)["u"] == 1:
        assert back == [None if e == Announced(NO_TIME, False) else e for e in entries]


def test_a_typical_table_is_exact():
    hour = 3_600_000
    entries = [Announced(1_700_000_000_000 + i * hour, i % 3 == 0) for i in range(MAX_UPSTREAM)]
    text = UpstreamTable(len(entries), entries).encode()
    assert orjson.loads(text)["u"] == 1 and UpstreamTable.decode(text, 0).entries == entries


class _Context:
    """What a repartition source needs of its slot: a place for failed records."""

    def __init__(self) -> None:
        self.failed: list[tuple[str, int]] = []

    def fail(self, operator, reason, batch, elem, exc) -> None:
        self.failed.append((reason, elem[3]))


class _Collect:
    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def process(self, batch: Batch) -> None:
        self.batches.append(batch)


def test_a_repartition_source_takes_the_event_time_from_the_envelope():
    """``[key, value, event time]``; an earlier version's ``[key, value]`` has it as the
    record timestamp (`tests.fakes.Msg`: 1000 + offset); anything else fails to decode."""
    op = RepartitionSource(id=1, name="source-r", topic=R, upstream="in", partitions=None)
    ctx = _Context()
    source = RepartitionSourceOp(op, ctx)  # type: ignore[arg-type]
    source.out = out = _Collect()
    msgs = [Msg(R, 0, 0, ["a", {"v": 1}, 42]), Msg(R, 0, 1, ["b", 2]), Msg(R, 0, 2, {"x": 1})]
    source.process(Batch(R, 0, msgs))
    assert out.batches[0].elems == [("a", {"v": 1}, 42, 0), ("b", 2, 1_001, 1)]
    assert ctx.failed == [("decode", 2)]
