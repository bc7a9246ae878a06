"""State that cannot be stored is refused at the record that made it, without a broker.

The epoch buffer encodes a value when an operator stores it: a value the JSON serde
cannot encode (NaN, infinity, an integer beyond 64 bits, a set, a non-string dict key)
or whose changelog record would exceed what the changelog accepts raises
`UnstorableState`, and the key's state stays as it was before that record; the bytes
a checkpoint writes are the ones encoded then, so freezing the epoch encodes nothing
and cannot fail. Keyed aggregates, windows and process functions (records and timers)
send such a record to the dead-letter path with reason ``state``, naming the operator
and the key, and go on with the next record.

End to end (`tests/jobs/unstorable.py`, read_committed outputs): a reading whose event
time is 1e20, one whose windowed sum would be 2**70, and readings that grow a list
state past 1 MB each go to the dead-letter topic with their reason; the worker never
restarts nor fails a checkpoint, and every other key's results are exact.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.kafka_fixture import consume_all, produce_json
from tests.workers import WorkerProcess, job_env, metric
from weir import Job, KeyedProcessFunction, Tumbling
from weir.operators.chain import Batch
from weir.operators.keyed import AggregateOp, states_of
from weir.operators.physical import compile_plan
from weir.operators.plan import Op
from weir.operators.process import ProcessOp
from weir.operators.windowed import WindowOp
from weir.service.changelog import Changelogs
from weir.service.topics import TopicLimits
from weir.state.epoch import EpochBuffer
from weir.state.exceptions import UnstorableState
from weir.state.layout import changelog_key, state_key
from weir.state.serde import JsonSerde
from weir.state.store import StateStore

GROUPS = 128
STATE = "op.acc"


def skey(key: str, partition: int = 0) -> bytes:
    return state_key(partition, key.encode(), GROUPS)


class Store:
    """A RocksDB state store in a temporary directory, with checkpoints."""

    def __init__(self, states: tuple[str, ...], limits: dict[str, int] | None = None) -> None:
        self.states, self.limits = states, limits
        self.dir = Path(tempfile.mkdtemp(prefix="weir-unstorable-"))
        self.db = StateStore(self.dir, states)
        self.checkpoints = 0

    def buffer(self) -> EpochBuffer:
        return EpochBuffer(self.db, {s: JsonSerde() for s in self.states}, self.limits)

    def checkpoint(self, buffer: EpochBuffer) -> list:
        self.checkpoints += 1
        writes = buffer.freeze()
        self.db.apply(writes, {}, self.checkpoints)
        buffer.applied()
        return writes

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store((STATE,), {STATE: 300})
    yield s
    s.close()


# -- the check itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (float("nan"), "NaN or infinity"),
        ({"mean": [float("inf"), 1]}, "NaN or infinity"),
        (2**70, "64-bit"),
        ({1: "a"}, "str"),
        ({"a", "b"}, "set"),
        (list(range(200)), "its changelog accepts"),
    ],
)
def test_a_value_that_cannot_be_stored_is_refused_and_the_state_stays(store, value, problem):
    buffer = store.buffer()
    buffer.put(STATE, skey("old"), 1)
    store.checkpoint(buffer)
    buffer.put(STATE, skey("new"), [1, 2])  # written in this epoch
    for key in ("old", "new", "absent"):
        with pytest.raises(UnstorableState, match=problem):
            buffer.put(STATE, skey(key), value)
    assert [buffer.get(STATE, skey(k)) for k in ("old", "new", "absent")] == [1, [1, 2], None]
    writes = store.checkpoint(buffer)
    assert writes == [(STATE, skey("new"), b"[1,2]")], "only what was stored is written"


def test_none_and_the_text_null_are_stored(store):
    buffer = store.buffer()
    for i, value in enumerate([None, "null", {"k": None, "w": [None, 1.5]}]):
        buffer.put(STATE, skey(f"k{i}"), value)
    assert [orjson.loads(v) for _, _, v in store.checkpoint(buffer)] == [
        None, "null", {"k": None, "w": [None, 1.5]}
    ]  # fmt: skip


def test_the_limit_is_on_the_whole_changelog_record(store):
    """Key (state name and storage key) and value together: 300 bytes fit, 301 do not."""
    key = skey("k")
    room = 300 - len(changelog_key(STATE, key))
    buffer = store.buffer()
    buffer.put(STATE, key, "x" * (room - 2))  # two quotes: exactly 300 bytes
    with pytest.raises(UnstorableState, match="would be 301 bytes, more than the 300"):
        buffer.put(STATE, key, "x" * (room - 1))
    assert buffer.get(STATE, key) == "x" * (room - 2)


def test_a_lowered_limit_reaches_writers_already_held(store):
    """A changelog topic's limit lowered while the worker runs (`LimitsRefresher`): a
    writer an operator took before the change refuses by the new limit."""
    buffer = store.buffer()
    put = buffer.writer(STATE)
    put(skey("k"), "x" * 200)
    buffer.set_limits({STATE: 100})
    with pytest.raises(UnstorableState, match="more than the 100"):
        put(skey("k"), "x" * 200)
    assert buffer.get(STATE, skey("k")) == "x" * 200, "the state is what was stored"


def test_a_value_changed_in_place_is_put_back(store):
    """Operators change live values in place (a window appends to its list): a refused
    value is replaced by what was last stored, not left half-changed."""
    buffer = store.buffer()
    buffer.put(STATE, skey("k"), {"w": [1]})
    value = buffer.get(STATE, skey("k"))
    value["w"].append(float("nan"))
    with pytest.raises(UnstorableState):
        buffer.put(STATE, skey("k"), value)
    assert buffer.get(STATE, skey("k")) == {"w": [1]}
    store.checkpoint(buffer)
    value = buffer.get(STATE, skey("k"))  # now from RocksDB
    value["w"].append(2**70)
    with pytest.raises(UnstorableState):
        buffer.put(STATE, skey("k"), value)
    assert buffer.get(STATE, skey("k")) == {"w": [1]}


def test_values_are_encoded_once_when_stored_never_at_the_checkpoint(store):
    calls: list[Any] = []

    class Counting(JsonSerde):
        @staticmethod
        def dumps(value: Any) -> bytes:
            calls.append(value)
            return JsonSerde.dumps(value)

    buffer = EpochBuffer(store.db, {STATE: Counting()})
    for n in range(3):
        buffer.put(STATE, skey("k"), n)
    buffer.delete(STATE, skey("gone"))
    assert len(calls) == 3
    writes = buffer.freeze()
    assert len(calls) == 3, "freezing encodes nothing"
    assert writes == [(STATE, skey("k"), b"2"), (STATE, skey("gone"), None)]
    assert buffer.get(STATE, skey("k")) == 2, "readable from the frozen bytes until applied"


def test_each_state_gets_its_changelogs_limit():
    job = Job("limits")
    src = job.source("in", timestamp=lambda r: r["ts"])
    src.key_by().aggregate(n="count", name="agg").sink("a")
    src.key_by().window(Tumbling(seconds=1)).aggregate(n="count", name="win").sink("b")
    changelogs = Changelogs(compile_plan(job, "g"))
    limits = {"g.agg.changelog": TopicLimits(max_bytes=5000), "g.win.changelog": TopicLimits()}
    assert changelogs.record_limits(limits) == {"agg.acc": 5000}, "None: no limit"


# -- operators -----------------------------------------------------------------------


class Ctx:
    """The slot context of a stateful operator: failures are recorded."""

    slot, slots = 0, 1

    def __init__(self, state: EpochBuffer) -> None:
        self.state = state
        self.failed: list[tuple[str, str, Any, str]] = []

    def fail(self, operator: str, reason: str, batch: Batch, elem: Any, exc: BaseException):
        self.failed.append((operator, reason, elem[0], str(exc)))

    def late(self, operator: str, count: int, reason: str = "late") -> None:
        raise AssertionError("nothing is late here")

    def produce(self, topic: str, rows: list, batch: Batch) -> None:
        raise AssertionError("nothing is produced here")


class Collector:
    def __init__(self) -> None:
        self.values: list[Any] = []

    def process(self, batch: Batch) -> None:
        self.values.extend(e[1] for e in batch.elems)


def stateful(job: Job) -> Op:
    (node,) = compile_plan(job, "g").stateful
    return node.op


def run(op_class: type, node: Op, limit: int | None, *args: Any) -> tuple[Any, Collector, Store]:
    """The operator over a fresh store whose keyed state's changelog takes ``limit``."""
    states = states_of(node)
    s = Store(states, {states[0]: limit} if limit else None)
    op = op_class(node, Ctx(s.buffer()), GROUPS, *args)
    op.out = out = Collector()
    return op, out, s


def elems(items: list[tuple[str, dict, int]]) -> Batch:
    return Batch("in", 0, [(k, v, t, i) for i, (k, v, t) in enumerate(items)])


def test_an_aggregate_of_2_to_the_70_fails_its_record_and_the_key_keeps_counting():
    job = Job("agg")
    (
        job.source("in")
        .key_by()
        .aggregate(n="count", total=("sum", lambda r: int(r["v"])), name="stats")
        .sink("out")
    )
    op, out, s = run(AggregateOp, stateful(job), None)
    try:
        op.process(elems([("a", {"v": 1}, 0), ("b", {"v": 2**70}, 0), ("b", {"v": 5}, 0)]))
        op.process(elems([("a", {"v": 1.18e21}, 0), ("a", {"v": 2}, 0)]))  # 2**70 as a float
        assert out.values == [
            {"key": "a", "n": 1, "total": 1},
            {"key": "b", "n": 1, "total": 5},
            {"key": "a", "n": 2, "total": 3},
        ], "the refused records emitted nothing and counted nothing"
        assert [f[:3] for f in op.ctx.failed] == [("stats", "state", "b"), ("stats", "state", "a")]
        assert "operator 'stats' cannot store the state of key 'b'" in op.ctx.failed[0][3]
        assert "Integer exceeds 64-bit range" in op.ctx.failed[0][3]
    finally:
        s.close()


def test_a_window_that_would_outgrow_the_changelog_is_reported_and_fires_as_it_was():
    job = Job("win")
    (
        job.source("in", timestamp=lambda r: r["ts"])
        .key_by()
        .window(Tumbling(seconds=10))
        .process(lambda key, window, items: {"n": len(items)}, name="all")
        .sink("out")
    )
    op, out, s = run(WindowOp, stateful(job), 2000, "in")
    try:
        op.own({0}, None)
        pad = "x" * 200
        op.process(elems([(k, {"pad": pad}, 1000 + i) for i in range(20) for k in ("big", "b")]))
        op.process(elems([("small", {"nan": float("nan")}, 1000), ("small", {}, 1001)]))
        op.advance(10_000)
        fired = {v["key"]: v["n"] for v in out.values}
        refused = [f for f in op.ctx.failed if f[2] == "big"]
        assert 0 < len(refused) < 20
        assert fired["big"] == 20 - len(refused), "the window holds what fit, and fires"
        assert fired["b"] == fired["big"], "each key is checked on its own"
        assert fired["small"] == 1, "NaN refused, the next record kept"
        assert {f[1] for f in op.ctx.failed} == {"state"}
        assert "operator 'all' cannot store the state of key 'big'" in refused[0][3]
        assert "its changelog accepts" in refused[0][3]
    finally:
        s.close()


class Grow(KeyedProcessFunction):
    """Appends each record's ``pad`` to a list state and emits the list's length; a
    timer at ``ts + 10`` appends ``pad`` of the timer record once more."""

    def process_element(self, value, ctx):
        items = ctx.list_state("items")
        items.add(value["pad"])
        if value.get("timer"):
            ctx.timers.register_event_time(ctx.timestamp + 10)
        ctx.emit({"key": ctx.key, "n": len(items.get())})

    def on_timer(self, timestamp, ctx):
        ctx.list_state("items").add("y" * 500)
        ctx.emit({"key": ctx.key, "timer": timestamp})


def test_a_list_state_grown_past_the_limit_fails_the_record_and_then_the_timer():
    job = Job("grow")
    (
        job.source("in", timestamp=lambda r: r["ts"])
        .key_by()
        .process(Grow(), name="grow")
        .sink("out")
    )
    op, out, s = run(ProcessOp, stateful(job), 1500, "in")
    try:
        op.own({0}, None)
        pad = "x" * 300
        op.process(elems([("big", {"pad": pad}, 100) for _ in range(6)]))
        op.process(elems([("t", {"pad": pad, "timer": True}, 100)]))
        op.process(elems([("t", {"pad": pad}, 100) for _ in range(3)]))  # near the limit
        lengths = [v["n"] for v in out.values if v["key"] == "big"]
        assert lengths == [1, 2, 3, 4], "records 5 and 6 would pass 1500 bytes: refused"
        assert [f[:3] for f in op.ctx.failed] == [("grow", "state", "big")] * 2
        assert "operator 'grow' cannot store the state of key 'big'" in op.ctx.failed[0][3]
        op.advance(110, 0)  # the timer would add 500 bytes: refused, spent
        op.advance(10**6, 0)
        assert not [v for v in out.values if "timer" in v], "the refused call emitted nothing"
        assert op.ctx.failed[-1][:3] == ("grow", "state", "t")
        state = op.buffer.get(op.state, skey("t"))
        assert state["l"]["items"] == [pad] * 4 and "t" not in state, "list kept, timer spent"
    finally:
        s.close()


# -- end to end ----------------------------------------------------------------------

PAD = 120_000  # 8 of these fit in a changelog record of 1 MB (1000000 or 1048576), 9 do not


def test_unstorable_records_go_to_the_dlq_and_the_job_runs_on(kafka_bootstrap, new_topic, tmp_path):
    src, windows_out, lists_out = new_topic(partitions=2), new_topic(), new_topic()
    group = f"unstorable-{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)
    start = now - 60_000 - now % 10_000
    good = [{"tag": f"s{i % 5}", "ts": start + i * 100, "value": i} for i in range(300)]
    big = [{"tag": "big", "ts": start + 1000 + i, "value": 1, "pad": "x" * PAD} for i in range(12)]
    big.append({"tag": "big", "ts": start + 2000, "value": 1})  # no pad: fits again
    bad = [
        {"tag": "s1", "ts": 1e20, "value": 7},  # not an epoch-ms event time
        {"tag": "s2", "ts": start + 555, "value": float(2**70)},  # int(): a sum beyond 64 bits
    ]
    produce_json(kafka_bootstrap, src, good + big + bad, key=lambda r: r["tag"])
    worker = WorkerProcess(
        "unstorable.py", kafka_bootstrap, group, "w1", tmp_path,
        job_env(in_=src, windows=windows_out, lists=lists_out),
        ["--checkpoint-interval-ms", "200"],
    )  # fmt: skip
    want_windows: dict[tuple[str, int], list[int]] = defaultdict(list)
    for r in good + big:
        want_windows[(r["tag"], r["ts"] - r["ts"] % 10_000)].append(r["value"])
    appended = Counter(r["tag"] for r in good + big + bad[1:])
    try:
        windows = consume_all(kafka_bootstrap, windows_out, len(want_windows), timeout=120)
        lists = consume_all(kafka_bootstrap, lists_out, sum(appended.values()) - 4, timeout=60)
        # not JSON: a dead letter keeps at most 64 kB of the record's value
        dead = consume_all(kafka_bootstrap, f"{group}.dlq", 6, timeout=60, decode_json=False)
        metrics = worker.metrics()
        worker.check_alive()
        assert worker.terminate(60) == 0
    finally:
        worker.close()

    got = {(w["value"]["key"], w["value"]["window_start"]): w["value"] for w in windows}
    assert set(got) == set(want_windows), "every window of the stored readings, no other"
    for key, values in want_windows.items():
        assert (got[key]["count"], got[key]["sum"]) == (len(values), sum(values)), key
    lengths: dict[str, list[int]] = defaultdict(list)
    for r in lists:  # one key's outputs are in one partition, in order
        lengths[r["value"]["key"]].append(r["value"]["n"])
    assert lengths.pop("big") == [*range(1, 9), 9], "4 pads refused; the list kept 8, then 9"
    assert lengths == {k: list(range(1, n + 1)) for k, n in appended.items() if k != "big"}

    letters = sorted(
        (h["weir.reason"].decode(), h["weir.operator"].decode(), h["weir.error"].decode())
        for h in (dict(d["headers"]) for d in dead)
    )
    by_reason = Counter((reason, op) for reason, op, _ in letters)
    assert by_reason[("state", "append")] == 4 and by_reason[("state", "sums")] == 1
    assert sum(n for (reason, _), n in by_reason.items() if reason == "timestamp") == 1
    errors = {op: error for reason, op, error in letters if reason == "state"}
    assert "cannot store the state of key 'big'" in errors["append"]
    assert "its changelog accepts" in errors["append"]
    assert "cannot store the state of key 's2'" in errors["sums"] and "64-bit" in errors["sums"]
    assert metric(metrics, "weir_restarts_total") == 0
    assert metric(metrics, "weir_checkpoints_total", status="failed") == 0
    assert metric(metrics, "weir_records_failed_total", reason="state") == 5
