"""Property tests of event-time windows, without a broker.

`weir.operators.windowed.WindowOp` is driven directly, as a slot drives it: batches of
``(key, value, ts, offset)`` elements from one partition, ``advance(watermark)``
between batches, checkpoints (the epoch buffer frozen and applied to a real RocksDB
`StateStore`), restarts from the last checkpoint (a fresh buffer and operator, whose
timers are rebuilt from state by ``own``) and crashes (uncommitted work and outputs
dropped, the inputs since the checkpoint replayed). The harness computes the watermark
as a partition does: max timestamp seen - max out-of-orderness.

Properties:

1. window assignment: tumbling/sliding/session results equal an independent
   reference (windows computed from the definitions, sessions by gaps and islands);
2. out-of-order input within the bound gives the same results as sorted input, no
   record is late, and a window is emitted exactly when the watermark first reaches its
   end - 1: never before, never later, never twice;
3. with records beyond the bound and allowed lateness (tumbling, sliding), every
   emission - first results and updates - and every late record equal a simple model;
4. restarts and crashes at any point change none of the committed results.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from weir import Job, Session, Sliding, Tumbling
from weir.operators.chain import Batch
from weir.operators.physical import compile_plan
from weir.operators.timers import NO_TIME
from weir.operators.windowed import WindowOp, window_states
from weir.state.epoch import EpochBuffer
from weir.state.serde import JsonSerde
from weir.state.store import StateStore

# No "explain" phase: it multiplies the time a failing case takes to report.
SETTINGS = settings(
    max_examples=int(os.environ.get("WEIR_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
)
END = 10**15  # a final watermark past everything


# -- window kinds and the reference -------------------------------------------------------


def spec_of(kind: str, a: int, b: int = 0) -> Any:
    """Weir's spec for sizes in ms."""
    if kind == "tumbling":
        return Tumbling(seconds=a / 1000)
    if kind == "sliding":
        return Sliding(seconds=a / 1000, every=b / 1000)
    return Session(gap=a / 1000)


def ref_windows(kind: str, a: int, b: int, ts: int) -> list[tuple[int, int]]:
    """The windows containing ``ts`` by definition (sessions: [ts, ts + gap))."""
    if kind == "tumbling":
        return [(ts // a * a, ts // a * a + a)]
    if kind == "sliding":
        first = (ts - a) // b * b + b  # smallest multiple of b that is > ts - a
        return [(s, s + a) for s in range(first, ts + 1, b)]
    return [(ts, ts + a)]


def agg(values: list[int]) -> tuple:
    return (len(values), sum(values), min(values), max(values), sum(values) / len(values))


def reference(kind: str, a: int, b: int, events: list[tuple[str, int, int]]) -> dict:
    """(key, start, end) -> aggregates over ``(key, ts, value)`` events."""
    if kind != "session":
        out: dict[tuple, list[int]] = defaultdict(list)
        for k, ts, v in events:
            for s, e in ref_windows(kind, a, b, ts):
                out[(k, s, e)].append(v)
        return {w: agg(vs) for w, vs in out.items()}
    by_key: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for k, ts, v in events:
        by_key[k].append((ts, v))
    result = {}
    for k, items in by_key.items():
        items.sort()
        group = [items[0]]
        for ts, v in items[1:]:
            if ts - group[-1][0] < a:
                group.append((ts, v))
            else:
                result[(k, group[0][0], group[-1][0] + a)] = agg([x for _, x in group])
                group = [(ts, v)]
        result[(k, group[0][0], group[-1][0] + a)] = agg([x for _, x in group])
    return result


def result_of(v: dict) -> tuple:
    return (v["count"], v["sum"], v["min"], v["max"], v["mean"])


def same(x: tuple, y: tuple) -> bool:
    return x[:4] == y[:4] and math.isclose(x[4], y[4], rel_tol=1e-9, abs_tol=1e-9)


# -- driving a WindowOp ---------------------------------------------------------------


class Collector:
    """Stands in for the operator after the window (the sink)."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    def process(self, batch: Batch) -> None:
        self.harness.pending.extend(e[1] for e in batch.elems)

    def on_barrier(self, barrier: Any) -> None:
        pass


class Ctx:
    """The slot context a WindowOp uses: keyed state, late records, failures."""

    slot, slots = 0, 1

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.state: EpochBuffer | None = None

    def late(self, operator: str, count: int) -> None:
        self.harness.pending_late += count

    def produce(self, topic: str, rows: list, batch: Batch) -> None:
        self.harness.pending_late_rows.extend(orjson.loads(v) for _, v, _, _ in rows)

    def fail(self, operator: str, reason: str, batch: Batch, elem: Any, exc: BaseException):
        raise AssertionError(f"{operator} failed ({reason}) on {elem}: {exc!r}") from exc

    def send(self, slot: int, target: int, item: Any) -> None:
        raise AssertionError("a window never sends")

    def observe_time(self, topic: str, partition: int, max_timestamp: int) -> None:
        pass


class Harness:
    """One partition's WindowOp over a real RocksDB, with exactly-once bookkeeping:
    outputs and late records count once their checkpoint is taken."""

    def __init__(self, spec: Any, lateness_ms: int = 0, late_topic: str | None = "late") -> None:
        job = Job("props")
        (
            job.source("in", timestamp=lambda r: r["ts"])
            .key_by()
            .window(spec, allowed_lateness=lateness_ms / 1000, late_topic=late_topic)
            .aggregate(
                count="count",
                sum=("sum", "v"),
                min=("min", "v"),
                max=("max", "v"),
                mean=("mean", "v"),
                name="stats",
            )
            .sink("out")
        )
        (state,) = compile_plan(job, "props").stateful
        self.node = state.op
        self.states = window_states(self.node)
        self.dir = Path(tempfile.mkdtemp(prefix="weir-props-"))
        self.store = StateStore(self.dir, self.states)
        self.serdes = {s: JsonSerde() for s in self.states}
        self.ctx = Ctx(self)
        self.committed: list[dict] = []
        self.pending: list[dict] = []
        self.committed_late = self.pending_late = 0
        self.committed_late_rows: list[dict] = []
        self.pending_late_rows: list[dict] = []
        self.since_checkpoint: list[tuple[str, Any]] = []
        self.checkpoint_id = 0
        self.offset = 0
        self.op = self._fresh()

    def _fresh(self) -> WindowOp:
        self.ctx.state = EpochBuffer(self.store, self.serdes)
        op = WindowOp(self.node, self.ctx, 128, "in")
        op.out = Collector(self)
        op.own({0}, None)
        return op

    # the slot's operations
    def process(self, events: list[tuple[str, int, int]], log: bool = True) -> None:
        elems = []
        for k, ts, v in events:
            elems.append((k, {"k": k, "ts": ts, "v": v}, ts, self.offset))
            self.offset += 1
        self.op.process(Batch("in", 0, elems))
        if log:
            self.since_checkpoint.append(("process", events))

    def advance(self, watermark: int, log: bool = True) -> None:
        self.op.advance(watermark)
        if log:
            self.since_checkpoint.append(("advance", watermark))

    def checkpoint(self) -> None:
        """Barrier: freeze the epoch, commit it (outputs too), apply it to RocksDB."""
        self.checkpoint_id += 1
        writes = self.ctx.state.freeze()
        self.store.apply(writes, {}, self.checkpoint_id)
        self.ctx.state.applied()
        self.committed += self.pending
        self.committed_late += self.pending_late
        self.committed_late_rows += self.pending_late_rows
        self.pending, self.pending_late, self.pending_late_rows = [], 0, []
        self.since_checkpoint = []

    def restart(self) -> None:
        """A clean restart right after a checkpoint (or a rebalance back to this slot)."""
        self.checkpoint()
        self.op = self._fresh()

    def crash(self) -> None:
        """Lose everything since the last checkpoint, rebuild, replay the inputs."""
        self.pending, self.pending_late, self.pending_late_rows = [], 0, []
        replay, self.since_checkpoint = self.since_checkpoint, []
        self.op = self._fresh()
        for what, arg in replay:
            if what == "process":
                self.process(arg)
            else:
                self.advance(arg)

    def act(self, action: str) -> None:
        """The action a stream drew for after a batch: checkpoint, restart, crash or none."""
        if action == "checkpoint":
            self.checkpoint()
        elif action == "restart":
            self.restart()
        elif action == "crash":
            self.crash()

    def emitted(self) -> list[dict]:
        return self.committed + self.pending

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- strategies ---------------------------------------------------------------------------

KINDS = st.sampled_from(
    [
        ("tumbling", 1000, 0), ("tumbling", 2500, 0), ("tumbling", 10_000, 0),
        ("sliding", 10_000, 2000), ("sliding", 5000, 2000), ("sliding", 3000, 3000),
        ("sliding", 4000, 1000),
        ("session", 1000, 0), ("session", 3000, 0), ("session", 5000, 0),
    ]
)  # fmt: skip
KEYS = st.sampled_from(["a", "b", "c"])
# after a batch: advance the watermark (most of the time), maybe checkpoint, restart, crash
ACTIONS = st.tuples(
    st.booleans() | st.just(True),
    st.sampled_from(["none", "none", "none", "checkpoint", "restart", "crash"]),
)


@st.composite
def bounded_stream(draw: Any, max_events: int = 40) -> dict:
    """Events generated in time order, each delayed by less than out-of-orderness
    (ts > max so far - ooo): delivered in that order, none can be late."""
    ooo = draw(st.sampled_from([0, 1000, 2000]))
    n = draw(st.integers(1, max_events))
    start = draw(st.integers(0, 10**12))  # anywhere in epoch time; windows are epoch-aligned
    # A record is late when end - 1 <= max - ooo, so "within the bound" means a delay
    # of at most ooo - 1 ms behind the max so far; with ooo = 0 no ties either.
    steps = draw(st.lists(st.integers(0 if ooo else 1, 3000), min_size=n, max_size=n))
    delays = draw(st.lists(st.integers(0, max(ooo - 1, 0)), min_size=n, max_size=n))
    keys = draw(st.lists(KEYS, min_size=n, max_size=n))
    values = draw(st.lists(st.integers(-50, 50), min_size=n, max_size=n))
    true, events = start + ooo, []
    for i in range(n):
        true += steps[i]
        events.append((keys[i], true - delays[i], values[i]))
    cuts = draw(st.lists(st.integers(1, 8), min_size=n, max_size=n))
    actions = draw(st.lists(ACTIONS, min_size=n, max_size=n))
    return {"ooo": ooo, "events": events, "cuts": cuts, "actions": actions}


def batches(events: list, cuts: list[int]) -> list[list]:
    out, i, j = [], 0, 0
    while i < len(events):
        out.append(events[i : i + cuts[j]])
        i += cuts[j]
        j += 1
    return out


def run(harness: Harness, events: list, cuts: list[int], actions: list, ooo: int,
        check_firing: dict | None = None, kind: str = "") -> None:  # fmt: skip
    """Feed ``events`` in batches; after each, maybe advance to max - ooo and do the
    batch's action. With ``check_firing`` (the final reference), after every advance the
    emitted windows must be exactly those whose end - 1 the watermark has reached."""
    max_ts = NO_TIME
    for i, batch in enumerate(batches(events, cuts)):
        harness.process(batch)
        max_ts = max(max_ts, *(ts for _, ts, _ in batch))
        advance, action = actions[i]
        if advance:
            wm = max_ts - ooo
            harness.advance(wm)
            if check_firing is not None:
                assert_fired_exactly(harness, check_firing, wm, kind)
        harness.act(action)
    harness.advance(END)
    harness.checkpoint()


def assert_fired_exactly(harness: Harness, ref: dict, wm: int, kind: str) -> None:
    emitted = Counter((v["key"], v["window_start"], v["window_end"]) for v in harness.emitted())
    due = {w for w in ref if w[2] - 1 <= wm}
    twice = [w for w, n in emitted.items() if n > 1]
    assert not twice, f"{kind}: emitted twice by watermark {wm}: {twice}"
    early = set(emitted) - due
    assert not early, f"{kind}: emitted before the watermark {wm} reached end - 1: {early}"
    missing = due - set(emitted)
    assert not missing, f"{kind}: watermark {wm} passed end - 1 but not emitted: {missing}"


def results(emitted: list[dict]) -> dict[tuple, tuple]:
    out = {}
    for v in emitted:
        w = (v["key"], v["window_start"], v["window_end"])
        assert w not in out, f"{w} emitted twice"
        out[w] = result_of(v)
    return out


def assert_results(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), (
        f"{what}: missing {sorted(set(want) - set(got))[:5]},"
        f" extra {sorted(set(got) - set(want))[:5]}"
    )
    wrong = [(w, got[w], want[w]) for w in want if not same(got[w], want[w])]
    assert not wrong, f"{what}: wrong results {wrong[:5]}"


# -- 1 + 2: assignment, bounded disorder, firing -------------------------------------------


@SETTINGS
@given(KINDS, bounded_stream())
def test_out_of_order_within_bound_equals_sorted_and_reference(kind_spec, stream):
    kind, a, b = kind_spec
    events, ooo = stream["events"], stream["ooo"]
    ref = reference(kind, a, b, events)
    outcomes = {}
    for order, evs in (("as delivered", events), ("sorted", sorted(events, key=lambda e: e[1]))):
        h = Harness(spec_of(kind, a, b))
        try:
            run(h, evs, stream["cuts"], stream["actions"], ooo, check_firing=ref, kind=kind)
            assert h.committed_late == 0, f"{order}: {h.committed_late} late within the bound"
            outcomes[order] = results(h.committed)
        finally:
            h.close()
        assert_results(outcomes[order], ref, f"{kind} {order}")
    assert outcomes["as delivered"] == outcomes["sorted"]


@SETTINGS
@given(st.integers(0, 10**13), st.integers(1, 20_000), st.integers(1, 20_000))
def test_assignment_matches_the_definitions(ts, size, slide):
    slide = min(slide, size)
    assert Tumbling(seconds=size / 1000).assign(ts) == ref_windows("tumbling", size, 0, ts)
    got = Sliding(seconds=size / 1000, every=slide / 1000).assign(ts)
    assert got == ref_windows("sliding", size, slide, ts)
    assert all(s % slide == 0 and s <= ts < e and e - s == size for s, e in got)
    assert Session(gap=size / 1000).assign(ts) == [(ts, ts + size)]


@SETTINGS
@given(
    st.lists(st.integers(0, 10**6), max_size=30),
    st.integers(1, 2000),
    st.integers(0, 3),
    st.booleans(),
)
def test_sliding_windows_of_one_spec_match_the_definition_call_after_call(
    stamps, slide, k, multiple
):
    """One spec assigns record after record (its last slide's windows are reused when
    the size is a multiple of the slide), sizes that are not multiples included."""
    size = (k + 1) * slide + (0 if multiple else slide // 2)
    spec = Sliding(seconds=size / 1000, every=slide / 1000)
    for ts in sorted(stamps) + stamps:
        assert spec.assign(ts) == ref_windows("sliding", size, slide, ts)


# -- 3: records beyond the bound, allowed lateness ---------------------------------------------


class Model:
    """Tumbling/sliding windows with allowed lateness, written from the definitions: a
    record skips every window with end - 1 + lateness <= the watermark; it is late when
    it skips all of them; adding to an already emitted window re-emits it; a window is
    emitted when the watermark reaches end - 1 and forgotten at end - 1 + lateness."""

    def __init__(self, kind: str, a: int, b: int, lateness: int) -> None:
        self.kind, self.a, self.b, self.lateness = kind, a, b, lateness
        self.wm = NO_TIME
        self.open: dict[tuple, dict] = {}
        self.emitted: list[tuple] = []
        self.late: list[tuple[str, int, int]] = []
        self.prefixes: dict[tuple, list[tuple]] = defaultdict(list)

    def process(self, events: list) -> None:
        wm = self.wm  # the watermark as of the start of the batch
        for k, ts, v in events:
            ws = [w for w in ref_windows(self.kind, self.a, self.b, ts)
                  if w[1] - 1 + self.lateness > wm]  # fmt: skip
            if not ws:
                self.late.append((k, ts, v))
            for s, e in ws:
                entry = self.open.setdefault((k, s, e), {"values": [], "fired": False})
                entry["values"].append(v)
                self.prefixes[(k, s, e)].append(agg(entry["values"]))
                if entry["fired"]:
                    self.emitted.append(((k, s, e), agg(entry["values"])))

    def advance(self, wm: int) -> None:
        if wm <= self.wm:
            return
        self.wm = wm
        for w, entry in sorted(self.open.items()):
            if not entry["fired"] and w[2] - 1 <= wm:
                entry["fired"] = True
                self.emitted.append((w, agg(entry["values"])))
            if entry["fired"] and w[2] - 1 + self.lateness <= wm:
                del self.open[w]


@st.composite
def disordered_stream(draw: Any) -> dict:
    """Any disorder: some records far behind the watermark."""
    n = draw(st.integers(1, 40))
    start = draw(st.integers(0, 10**12))
    steps = draw(st.lists(st.integers(0, 3000), min_size=n, max_size=n))
    delays = draw(st.lists(st.integers(0, 3000) | st.integers(0, 40_000), min_size=n, max_size=n))
    keys = draw(st.lists(KEYS, min_size=n, max_size=n))
    values = draw(st.lists(st.integers(-50, 50), min_size=n, max_size=n))
    true, events = start + 40_000, []
    for i in range(n):
        true += steps[i]
        events.append((keys[i], true - delays[i], values[i]))
    return {
        "ooo": draw(st.sampled_from([0, 1000, 2000])),
        "lateness": draw(st.sampled_from([0, 1, 1000, 5000])),
        "events": events,
        "cuts": draw(st.lists(st.integers(1, 8), min_size=n, max_size=n)),
        "actions": draw(st.lists(ACTIONS, min_size=n, max_size=n)),
    }


@SETTINGS
@given(KINDS.filter(lambda k: k[0] != "session"), disordered_stream())
def test_lateness_and_updates_match_the_model(kind_spec, stream):
    kind, a, b = kind_spec
    lateness, ooo = stream["lateness"], stream["ooo"]
    model = Model(kind, a, b, lateness)
    h = Harness(spec_of(kind, a, b), lateness_ms=lateness)
    try:
        max_ts = NO_TIME
        for i, batch in enumerate(batches(stream["events"], stream["cuts"])):
            h.process(batch)
            model.process(batch)
            max_ts = max(max_ts, *(ts for _, ts, _ in batch))
            advance, action = stream["actions"][i]
            if advance:
                h.advance(max_ts - ooo)
                model.advance(max_ts - ooo)
            h.act(action)
        h.advance(END)
        model.advance(END)
        h.checkpoint()
        got: dict[tuple, list] = defaultdict(list)
        for v in h.committed:
            got[(v["key"], v["window_start"], v["window_end"])].append(result_of(v))
        want: dict[tuple, list] = defaultdict(list)
        for w, r in model.emitted:
            want[w].append(r)
        assert set(got) == set(want), (
            f"missing {sorted(set(want) - set(got))[:4]}, extra {sorted(set(got) - set(want))[:4]}"
        )
        restarted = any(a in ("restart", "crash") for _, a in stream["actions"])
        for w in want:
            assert same(got[w][-1], want[w][-1]), f"{w}: final {got[w][-1]} != {want[w][-1]}"
            if not restarted:
                assert len(got[w]) == len(want[w]) and all(
                    same(x, y) for x, y in zip(got[w], want[w], strict=True)
                ), f"{w}: emissions {got[w]} != model {want[w]}"
            else:
                # A window that became due within its lateness (created after the
                # watermark passed its end) fires at the next advance, and after a
                # restart the first advance counts as one even at the same watermark:
                # an extra intermediate emission is possible, but every emission is a
                # result over a prefix of the window's records, growing.
                prefixes = model.prefixes[w]
                assert all(any(same(x, p) for p in prefixes) for x in got[w]), (w, got[w])
                counts = [x[0] for x in got[w]]
                assert counts == sorted(set(counts)), f"{w}: emissions not growing {got[w]}"
                assert set(map(tuple, want[w])) <= set(map(tuple, got[w])), (w, got[w])
        assert h.committed_late == len(model.late)
        assert sorted((r["record"]["k"], r["timestamp"], r["record"]["v"])
                      for r in h.committed_late_rows) == sorted(model.late)  # fmt: skip
        assert all(r["reason"].startswith("late: timestamp") for r in h.committed_late_rows)
    finally:
        h.close()


@SETTINGS
@given(KINDS.filter(lambda k: k[0] == "session"), disordered_stream())
def test_session_late_records_are_exactly_those_whose_own_window_is_gone(kind_spec, stream):
    """Without allowed lateness: a record is late iff ts + gap - 1 <= the watermark at
    its batch; every other record ends up in exactly one emitted session."""
    kind, gap, _ = kind_spec
    ooo = stream["ooo"]
    h = Harness(spec_of(kind, gap), lateness_ms=0)
    try:
        wm, max_ts, late = NO_TIME, NO_TIME, []
        kept: list[tuple[str, int, int]] = []
        for i, batch in enumerate(batches(stream["events"], stream["cuts"])):
            h.process(batch)
            for e in batch:
                (late if e[1] + gap - 1 <= wm else kept).append(e)
            max_ts = max(max_ts, *(ts for _, ts, _ in batch))
            advance, action = stream["actions"][i]
            if advance:
                wm = max(wm, max_ts - ooo)
                h.advance(max_ts - ooo)
            h.act(action)
        h.advance(END)
        h.checkpoint()
        assert h.committed_late == len(late)
        sessions = results(h.committed)
        assert sum(r[0] for r in sessions.values()) == len(kept), "each kept record once"
        assert sum(r[1] for r in sessions.values()) == sum(v for _, _, v in kept)
        by_key = defaultdict(list)
        for k, s, e in sessions:
            by_key[k].append((s, e))
        # (Sessions of a key may overlap: a record behind the watermark whose own
        # window is still open starts a new session next to one already fired and
        # dropped, as in Flink.)
        for k, ts, _ in kept:
            assert any(s <= ts < e - gap + 1 for s, e in by_key[k]), f"{(k, ts)} in no session"
    finally:
        h.close()


# -- regressions found by the properties (plain examples) ------------------------------------


def test_key_reopened_in_the_same_epoch_after_its_windows_were_dropped():
    """A session fires and, with no allowed lateness, the key's state is deleted; the
    key's next record in the same epoch (no checkpoint in between) must open a new session
    (found by the property above: the epoch buffer's DELETED marker was read as state)."""
    h = Harness(Session(gap=5))
    try:
        h.process([("a", 1000, 1)])
        h.advance(10_000)  # [1000, 6000) fires; the key's state is deleted
        h.process([("a", 20_000, 2)])
        h.advance(END)
        h.checkpoint()
        assert results(h.committed) == {
            ("a", 1000, 6000): agg([1]),
            ("a", 20_000, 25_000): agg([2]),
        }
    finally:
        h.close()


def test_stale_timer_of_a_deleted_key_is_ignored():
    """A session scheduled at 24999, then extended to 26999, fires at one advance past
    both: the second (stale) timer finds the key deleted in the same epoch."""
    h = Harness(Session(gap=5))
    try:
        h.process([("a", 0, 1), ("a", 20_000, 2)])
        h.advance(5000)  # [0, 5000) fires; [20000, 25000) is rescheduled at 24999
        h.process([("a", 22_000, 3)])  # extends it to [20000, 27000): a timer at 26999 too
        h.advance(30_000)
        h.checkpoint()
        assert results(h.committed) == {
            ("a", 0, 5000): agg([1]),
            ("a", 20_000, 27_000): agg([2, 3]),
        }
    finally:
        h.close()


@pytest.mark.parametrize("lateness", [0, 5000])
def test_window_boundaries_of_lateness(lateness):
    """end - 1 + lateness <= watermark is late; one ms later is not."""
    h = Harness(Tumbling(seconds=10), lateness_ms=lateness)
    try:
        h.process([("a", 15_000, 1)])
        h.advance(9_999 + lateness)  # window [0, 10000) is gone (or never existed)
        h.process([("a", 9_999, 5)])
        assert h.pending_late == 1
        h.advance(10_000 + lateness)  # no change for [10000, 20000)
        h.process([("a", 19_999, 7)])
        assert h.pending_late == 1, "window [10000, 20000) still takes records"
        h.advance(END)
        h.checkpoint()
        assert results(h.committed) == {("a", 10_000, 20_000): agg([1, 7])}
    finally:
        h.close()
