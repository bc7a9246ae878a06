"""The timer service (`weir.operators.timers`) and the operators using it, without a broker.

`Timers` is driven over a real epoch buffer and RocksDB `StateStore`, as a slot
drives it; `ProcessOp` and `WindowOp` as the slot does (``process``, ``advance``,
``own``), with checkpoints applied to RocksDB and restarts that build a fresh
operator over what was committed. Checked: timers are deduplicated per key and
time, fire in timestamp order and each once; they are rebuilt from state for the
partitions and key groups a slot is given; timers of partitions given up are
skipped; the watermark a partition reached is restored with it, so a process
function's timers fire after a restart with nothing new to read.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weir import Job, KeyedProcessFunction, Tumbling
from weir.operators.chain import Batch
from weir.operators.keyed import states_of
from weir.operators.plan import Op, Process, Window
from weir.operators.process import ProcessOp
from weir.operators.timers import EVENT, NO_TIME, PROCESSING, Timers, watermark_state
from weir.operators.windowed import WindowOp
from weir.state.epoch import EpochBuffer
from weir.state.keygroups import key_group
from weir.state.layout import key_group_of, key_of, partition_key, partition_of, state_key
from weir.state.serde import JsonSerde
from weir.state.store import StateStore

GROUPS = 128
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Store:
    """A RocksDB state store in a temporary directory, with checkpoints."""

    def __init__(self, states: tuple[str, ...]) -> None:
        self.states = states
        self.dir = Path(tempfile.mkdtemp(prefix="weir-timers-"))
        self.db = StateStore(self.dir, states)
        self.serdes = {s: JsonSerde() for s in states}
        self.checkpoints = 0

    def buffer(self) -> EpochBuffer:
        return EpochBuffer(self.db, self.serdes)

    def checkpoint(self, buffer: EpochBuffer) -> None:
        """Freeze the epoch and apply it to RocksDB, as a committed checkpoint is."""
        self.checkpoints += 1
        self.db.apply(buffer.freeze(), {}, self.checkpoints)
        buffer.applied()

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store(("op.keyed", watermark_state("op")))
    yield s
    s.close()


def skey(partition: int, key: str) -> bytes:
    return state_key(partition, key.encode(), GROUPS)


def stored_timers(value: Any) -> list[tuple[str, int]]:
    """A value as the tests store it: ``{"t": [[domain, time], ...]}``."""
    return [(d, t) for d, t in value["t"]]


def timers_over(buffer: EpochBuffer) -> Timers:
    return Timers(buffer, "op.keyed", "op", stored_timers)


# -- the layout the service relies on ----------------------------------------------------


@given(st.integers(0, 2**16 - 1), st.binary(max_size=40), st.integers(1, 32768))
def test_layout_gives_back_partition_and_key_group(partition, key, groups):
    k = state_key(partition, key, groups)
    assert partition_of(k) == partition
    assert key_group_of(k) == key_group(key, groups)
    assert partition_of(partition_key(partition)) == partition


# -- the service ---------------------------------------------------------------------


def test_a_key_fires_once_per_time_however_often_registered(store):
    t = timers_over(store.buffer())
    t.own({0}, None)
    for _ in range(3):
        t.register(EVENT, 100, skey(0, "a"))
    t.register(EVENT, 100, skey(0, "b"))
    t.register(PROCESSING, 100, skey(0, "a"))  # another domain: another timer
    t.advance(100, 100)
    fired = list(t.due())
    assert sorted(fired) == sorted(
        [(EVENT, 100, skey(0, "a")), (EVENT, 100, skey(0, "b")), (PROCESSING, 100, skey(0, "a"))]
    )
    assert list(t.due()) == [], "popped timers are gone"


TIMER = st.tuples(
    st.sampled_from([EVENT, PROCESSING]), st.integers(0, 50), st.sampled_from("abcdef")
)


@SETTINGS
@given(st.lists(st.lists(TIMER, max_size=12), min_size=1, max_size=6), st.data())
def test_each_timer_fires_once_in_timestamp_order_when_its_clock_reaches_it(rounds, data):
    """Rounds of registrations, each followed by an advance of the watermark and the
    clock (sometimes backwards: the clock never goes back, the watermark does — the
    runtime lowers it when a partition behind it joins): every distinct timer fires
    exactly once, at the first advance whose clock reached it; event time first, each
    domain in timestamp order."""
    s = Store(("op.keyed", watermark_state("op")))
    try:
        t = timers_over(s.buffer())
        t.own({0}, None)
        pending: set[tuple[str, int, str]] = set()
        wm = now = NO_TIME
        for timers in rounds:
            for domain, time, key in timers:
                t.register(domain, time, skey(0, key))
                pending.add((domain, time, key))
            new_wm, new_now = data.draw(st.integers(-5, 55)), data.draw(st.integers(-5, 55))
            t.advance(new_wm, new_now)
            wm, now = new_wm, max(now, new_now)
            assert (t.watermark, t.now) == (wm, now)
            fired = [(d, time, key_of(k).decode()) for d, time, k in t.due()]
            due = {x for x in pending if x[1] <= (wm if x[0] == EVENT else now)}
            assert len(fired) == len(set(fired)) and set(fired) == due
            domains = [d for d, _, _ in fired]
            assert domains == sorted(domains, key=[EVENT, PROCESSING].index), "event time first"
            for domain in (EVENT, PROCESSING):
                times = [time for d, time, _ in fired if d == domain]
                assert times == sorted(times)
            pending -= due
    finally:
        s.close()


def test_a_timer_registered_while_firing_and_already_due_fires_in_the_same_pass(store):
    t = timers_over(store.buffer())
    t.own({0}, None)
    t.register(EVENT, 10, skey(0, "a"))
    t.advance(20, NO_TIME)
    fired = []
    for domain, time, key in t.due():
        fired.append((domain, time))
        if time == 10:
            t.register(EVENT, 15, key)
            t.register(EVENT, 25, key)
    assert fired == [(EVENT, 10), (EVENT, 15)]


def test_ownership_rebuilds_timers_from_state_for_the_slots_key_groups(store):
    """Timers are read back from the keyed values of newly owned partitions, only for
    keys in the slot's key groups."""
    keys = [f"k{i}" for i in range(40)]
    buffer = store.buffer()
    for p in (0, 1, 2):
        for i, k in enumerate(keys):
            value = {"t": [[EVENT, 1000 + i], [PROCESSING, 5000 + i]]}
            buffer.put("op.keyed", skey(p, k), value)
    store.checkpoint(buffer)
    mine = range(0, 64)
    t = timers_over(store.buffer())
    t.own({0, 1}, mine)
    t.advance(10**6, 10**6)
    fired = list(t.due())
    want = {
        (d, base + i, skey(p, k))
        for p in (0, 1)
        for i, k in enumerate(keys)
        if key_group(k.encode(), GROUPS) in mine
        for d, base in ((EVENT, 1000), (PROCESSING, 5000))
    }
    assert 0 < len(want) < 2 * 2 * len(keys), "some keys in the slot's groups, some not"
    assert len(fired) == len(want) and set(fired) == want


def test_timers_of_a_partition_given_up_are_skipped_and_rebuilt_when_owned_again(store):
    buffer = store.buffer()
    t = timers_over(buffer)
    t.own({0, 1}, None)
    for p in (0, 1):
        t.register(EVENT, 100, skey(p, "a"))
        buffer.put("op.keyed", skey(p, "a"), {"t": [[EVENT, 100]]})
    t.own({0}, None)  # partition 1 moved to another slot
    t.advance(200, NO_TIME)
    assert list(t.due()) == [(EVENT, 100, skey(0, "a"))], "the stale timer of p1 is skipped"
    t.own({0, 1}, None)  # p1 is back: its timer comes from state again
    t.advance(300, NO_TIME)
    assert list(t.due()) == [(EVENT, 100, skey(1, "a"))]


def test_the_watermark_each_partition_reached_is_restored_with_it(store):
    buffer = store.buffer()
    t = timers_over(buffer)
    t.own({0, 1}, None)
    t.advance(500, NO_TIME)
    t.own({0}, None)
    t.advance(700, NO_TIME)  # only p0 is owned now
    t.advance(600, NO_TIME)  # no rise: nothing written
    store.checkpoint(buffer)
    restarted = timers_over(store.buffer())
    assert restarted.reached_watermark(0) == NO_TIME, "not owned yet"
    restarted.own({0}, None)
    assert (restarted.reached_watermark(0), restarted.reached_watermark(1)) == (700, NO_TIME)
    assert restarted.watermark == NO_TIME, "the restored one is per partition, not the clock"
    restarted.own({0, 1, 2}, None)
    assert [restarted.reached_watermark(p) for p in (0, 1, 2)] == [700, 500, NO_TIME]
    restarted.own({1, 2}, None)
    assert restarted.reached_watermark(0) == NO_TIME, "forgotten with the partition"


# -- the operators ---------------------------------------------------------------------


class Collector:
    """Stands in for the operator after the timer operator (the sink)."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def process(self, batch: Batch) -> None:
        self.values.extend(e[1] for e in batch.elems)


class Ctx:
    """The slot context a timer operator uses."""

    slot, slots = 0, 1

    def __init__(self, state: EpochBuffer) -> None:
        self.state = state
        self.failed: list[Any] = []

    def fail(self, operator: str, reason: str, batch: Batch, elem: Any, exc: BaseException):
        self.failed.append((reason, elem))

    def late(self, operator: str, count: int) -> None:
        pass

    def produce(self, topic: str, rows: list, batch: Batch) -> None:
        pass

    def send(self, slot: int, target: int, item: Any) -> None:
        raise AssertionError("a timer operator never sends")

    def observe_time(self, topic: str, partition: int, max_timestamp: int) -> None:
        pass


class Reminders(KeyedProcessFunction):
    """A record ``{"at": t}`` sets an event-time timer at t, ``{"at": t, "cancel": 1}``
    deletes it, ``{"in": ms}`` sets a processing-time timer ``ms`` after the record's
    timestamp; a timer emits ``[key, domain, time]``."""

    def process_element(self, value, ctx):
        if "in" in value:
            ctx.timers.register_processing_time(ctx.timestamp + value["in"])
        elif value.get("cancel"):
            ctx.timers.delete_event_time(value["at"])
        else:
            ctx.timers.register_event_time(value["at"])

    def on_timer(self, timestamp, ctx):
        ctx.emit([ctx.key, ctx.time_domain, timestamp])


def node_of(kind: type[Op], job: Job) -> Op:
    return next(op for op in job.dataflow.ops() if isinstance(op, kind))


def process_node() -> Process:
    job = Job("timers")
    (
        job.source("in", timestamp=lambda r: r["ts"])
        .key_by()
        .process(Reminders(), name="rem")
        .sink("out")
    )
    return node_of(Process, job)


def start(op_class: type, node: Op, store: Store, owned: set[int]) -> tuple[Any, Collector]:
    """A fresh operator over what ``store`` committed, owning ``owned``."""
    op = op_class(node, Ctx(store.buffer()), GROUPS, "in")
    out = Collector()
    op.out = out
    op.own(owned, None)
    return op, out


def records(partition: int, items: list[tuple[str, dict]]) -> Batch:
    return Batch("in", partition, [(k, v, 0, i) for i, (k, v) in enumerate(items)])


def test_process_function_timers_are_deduplicated_deleted_and_ordered():
    node = process_node()
    s = Store(states_of(node))
    try:
        op, out = start(ProcessOp, node, s, {0})
        op.process(
            records(
                0,
                [
                    ("a", {"at": 300}),
                    ("a", {"at": 100}),
                    ("a", {"at": 100}),  # again: still one timer
                    ("b", {"at": 200}),
                    ("b", {"at": 250}),
                    ("b", {"at": 250, "cancel": 1}),
                    ("c", {"in": 50}),
                ],
            )
        )
        op.advance(250, 49)
        assert out.values == [["a", "event", 100], ["b", "event", 200]]
        op.advance(250, 50)  # the clock alone moved
        assert out.values[2:] == [["c", "processing", 50]]
        op.advance(10**6, 10**6)
        assert out.values[3:] == [["a", "event", 300]]
        assert op.ctx.failed == []
    finally:
        s.close()


def test_process_function_timers_fire_after_a_restart_from_the_reached_watermark():
    """The watermark the partition reached is kept in state: after a restart with no
    input (all partitions idle), the runtime starts the watermark there, and the
    restored event-time timers past it fire as it moves on; those before it fired
    before the restart and do not fire again."""
    node = process_node()
    s = Store(states_of(node))
    try:
        op, out = start(ProcessOp, node, s, {0, 1})
        op.process(records(0, [("a", {"at": 1000}), ("b", {"at": 3000})]))
        op.process(records(1, [("c", {"at": 2500})]))
        op.advance(2000, NO_TIME)
        assert out.values == [["a", "event", 1000]]
        s.checkpoint(op.buffer)

        op, out = start(ProcessOp, node, s, {0, 1})
        assert [op.reached_watermark(p) for p in (0, 1, 2)] == [2000, 2000, NO_TIME]
        op.advance(op.reached_watermark(0), NO_TIME)
        assert out.values == [], "nothing fires twice"
        op.advance(op.reached_watermark(0) + 1000, NO_TIME)  # idle: moves with the clock
        assert sorted(out.values) == [["b", "event", 3000], ["c", "event", 2500]]
    finally:
        s.close()


def test_window_reached_watermark_keeps_late_records_late_after_a_restart():
    job = Job("timers")
    (
        job.source("in", timestamp=lambda r: r["ts"])
        .key_by()
        .window(Tumbling(seconds=1))
        .aggregate(n="count", name="w")
        .sink("out")
    )
    node = node_of(Window, job)
    s = Store(states_of(node))
    try:
        op, out = start(WindowOp, node, s, {0})
        op.process(Batch("in", 0, [("a", {}, 500, 0), ("a", {}, 1500, 1)]))
        op.advance(999)
        assert [(v["window_start"], v["n"]) for v in out.values] == [(0, 1)]
        s.checkpoint(op.buffer)

        op, out = start(WindowOp, node, s, {0})
        assert op.reached_watermark(0) == 999
        op.process(Batch("in", 0, [("a", {}, 700, 2), ("a", {}, 1700, 3)]))  # 700 is late
        op.advance(1999)
        assert [(v["window_start"], v["n"]) for v in out.values] == [(1000, 2)]
    finally:
        s.close()


def test_a_partition_joining_behind_lowers_the_watermark_but_nothing_late_becomes_on_time():
    """The runtime lowers a window's watermark when a partition behind it joins: the
    joining partition's records are on time against what it reached, the other
    partition's stay late against what it reached, and no window fires twice."""
    job = Job("timers")
    (
        job.source("in", timestamp=lambda r: r["ts"])
        .key_by()
        .window(Tumbling(seconds=1))
        .aggregate(n="count", name="w")
        .sink("out")
    )
    node = node_of(Window, job)
    s = Store(states_of(node))
    try:
        op, out = start(WindowOp, node, s, {0})
        op.process(Batch("in", 0, [("a", {}, 500, 0), ("a", {}, 1500, 1)]))
        op.advance(2999)
        assert sorted((v["window_start"], v["n"]) for v in out.values) == [(0, 1), (1000, 1)]
        out.values.clear()
        op.own({0, 1}, None)  # partition 1 joins, behind: the watermark goes back to it
        op.advance(999)
        assert [op.reached_watermark(p) for p in (0, 1)] == [2999, 999]
        op.process(Batch("in", 0, [("a", {}, 1600, 2)]))  # partition 0: still late
        op.process(Batch("in", 1, [("b", {}, 1200, 0), ("b", {}, 2500, 1)]))  # on time
        assert out.values == [], "nothing fired again, nothing fired early"
        op.advance(2999)
        assert sorted((v["key"], v["window_start"], v["n"]) for v in out.values) == [
            ("b", 1000, 1), ("b", 2000, 1)
        ]  # fmt: skip
    finally:
        s.close()
