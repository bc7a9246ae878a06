"""The Nexmark queries on Bytewax (run with benchmarks/.peers/bytewax's Python).

Run as ``python -m bytewax.run benchmarks/nexmark/peers/bytewax_app.py:flow``
with recovery on (``-r DIR -s 1``: a snapshot of state and input offsets
every second, Bytewax's fault-tolerance mechanism, its equivalent of a 1 s
checkpoint). Bytewax's Kafka sink is at-least-once only (after a restart it
replays from the last snapshot), so every Bytewax row runs at-least-once.

The source reads every partition to its end and stops (``tail=False``; the
latency runs set NEXMARK_TAIL=1 to keep reading), so
the dataflow ends when its input is done and flushes its last windows; input
offsets live in Bytewax's recovery store, not in a Kafka consumer group.
Event-time windows use an ``EventClock`` that waits 1 s for stragglers
(spec.OUT_OF_ORDERNESS_S), aligned to the epoch like the other systems'.

Configuration comes from the environment: NEXMARK_QUERY, NEXMARK_BOOTSTRAP,
NEXMARK_IN, NEXMARK_OUT.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root

import bytewax.operators as op
import bytewax.operators.windowing as win
import orjson
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Dataflow

from benchmarks.nexmark.spec import (
    OUT_OF_ORDERNESS_S,
    Q5_SIZE_MS,
    Q5_SLIDE_MS,
    Q7_SIZE_MS,
    higher_bid,
    is_bid,
    more_bids,
    q1_map,
    q2_filter,
    q2_project,
)

QUERY = os.environ["NEXMARK_QUERY"]
BROKERS = [os.environ["NEXMARK_BOOTSTRAP"]]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
loads, dumps = orjson.loads, orjson.dumps


def _event_time(r: dict) -> datetime:
    return EPOCH + timedelta(milliseconds=r["ts"])


def _frozen_now() -> datetime:
    return EPOCH


def _never(_close: datetime) -> None:
    return None


# EventClock's watermark is the largest event time seen - the wait + the wall-clock
# time elapsed since. On a backlog (event time running far ahead of wall time) any
# stall makes it jump ahead, windows close early and later bids are dropped as late:
# with the default clock q5/q7 come out wrong (counts too low; see the README). So
# the clock is frozen (NEXMARK_BYTEWAX_CLOCK=system restores the default): the
# watermark moves with event time only, per key, and EOF closes the rest.
if os.environ.get("NEXMARK_BYTEWAX_CLOCK", "event") == "system":
    CLOCK = win.EventClock(
        _event_time, wait_for_system_duration=timedelta(seconds=OUT_OF_ORDERNESS_S)
    )
else:
    CLOCK = win.EventClock(
        _event_time,
        wait_for_system_duration=timedelta(seconds=OUT_OF_ORDERNESS_S),
        now_getter=_frozen_now,
        to_system_utc=_never,  # no wall-clock wake-ups: new items and EOF close windows
    )


def _running(pick):
    def update(best, value):
        best = value if best is None else pick(best, value)
        return best, best

    return update


def _count(n, r):
    n = (n or 0) + 1
    return n, {"key": str(r["auction"]), "count": n, "ts": r["ts"]}


flow = Dataflow(f"nexmark_{QUERY}")
msgs = op.input(
    "in",
    flow,
    KafkaSource(
        BROKERS,
        [os.environ["NEXMARK_IN"]],
        tail=os.environ.get("NEXMARK_TAIL") == "1",
        batch_size=1000,
    ),
)
events = op.map("decode", msgs, lambda m: (m.key, loads(m.value)))

if QUERY in ("q0", "q1", "q2"):
    if QUERY == "q1":
        events = op.filter("bids", events, lambda kv: is_bid(kv[1]))
        events = op.map("convert", events, lambda kv: (kv[0], q1_map(kv[1])))
    elif QUERY == "q2":
        events = op.filter("select", events, lambda kv: q2_filter(kv[1]))
        events = op.map("project", events, lambda kv: (kv[0], q2_project(kv[1])))
    out = op.map("encode", events, lambda kv: KafkaSinkMessage(kv[0], dumps(kv[1])))
elif QUERY == "count":
    bids = op.filter("bids", op.map("values", events, lambda kv: kv[1]), is_bid)
    keyed = op.key_on("by-auction", bids, lambda r: str(r["auction"]))
    counted = op.stateful_map("count", keyed, _count)
    out = op.map("encode", counted, lambda kv: KafkaSinkMessage(kv[0].encode(), dumps(kv[1])))
elif QUERY == "q5":
    bids = op.filter("bids", op.map("values", events, lambda kv: kv[1]), is_bid)
    windower = win.SlidingWindower(
        length=timedelta(milliseconds=Q5_SIZE_MS),
        offset=timedelta(milliseconds=Q5_SLIDE_MS),
        align_to=EPOCH,
    )
    counts = win.count_window("count", bids, CLOCK, windower, lambda r: str(r["auction"]))

    def _q5_row(kv):
        auction, (window_id, n) = kv
        start = window_id * Q5_SLIDE_MS
        return {"window_start": start, "window_end": start + Q5_SIZE_MS,
                "auction": int(auction), "count": n}  # fmt: skip

    rows = op.map("row", counts.down, _q5_row)
    by_window = op.key_on("by-window", rows, lambda r: str(r["window_end"]))
    best = op.stateful_map("max", by_window, _running(more_bids))
    out = op.map("encode", best, lambda kv: KafkaSinkMessage(kv[0].encode(), dumps(kv[1])))
elif QUERY == "q7":
    bids = op.filter("bids", op.map("values", events, lambda kv: kv[1]), is_bid)
    slim = op.map(
        "project",
        bids,
        lambda r: {
            "auction": r["auction"],
            "bidder": r["bidder"],
            "price": r["price"],
            "ts": r["ts"],
        },
    )
    keyed = op.key_on("by-auction", slim, lambda r: str(r["auction"]))
    windower = win.TumblingWindower(length=timedelta(milliseconds=Q7_SIZE_MS), align_to=EPOCH)
    highest = win.reduce_window("highest", keyed, CLOCK, windower, higher_bid)

    def _q7_row(kv):
        _auction, (window_id, bid) = kv
        start = window_id * Q7_SIZE_MS
        return {
            "window_start": start,
            "window_end": start + Q7_SIZE_MS,
            "auction": bid["auction"],
            "bidder": bid["bidder"],
            "price": bid["price"],
        }

    rows = op.map("row", highest.down, _q7_row)
    by_window = op.key_on("by-window", rows, lambda r: str(r["window_end"]))
    best = op.stateful_map("max", by_window, _running(higher_bid))
    out = op.map("encode", best, lambda kv: KafkaSinkMessage(kv[0].encode(), dumps(kv[1])))
else:
    raise SystemExit(f"unknown query {QUERY}")

op.output(
    "out",
    out,
    KafkaSink(BROKERS, os.environ["NEXMARK_OUT"], add_config={"linger.ms": "5"}),
)
