"""The Nexmark queries on Quix Streams (run with benchmarks/.peers/quix's Python).

Settings are Quix's recommended ones for a fault-tolerant application:
``processing_guarantee="exactly-once"`` (or at-least-once with ``--guarantee``),
``commit_interval=1.0`` (Weir's checkpoint interval), RocksDB state with
changelog topics, event time from the record (``timestamp_extractor``), and
windows closed per partition (``closing_strategy="partition"``, so a quiet
auction does not keep its windows open; Weir's watermarks are per partition
too). Outputs follow `benchmarks/nexmark/spec.py`.

The joins: q3 is Quix's interval join (``join_interval``, a day either way, as
Weir's) of auctions re-keyed by seller with persons re-keyed by id. Quix cannot
join two branches of one topic, so each side goes through its own repartition
topic (``group_by``), and the join reads both, aligned by timestamp per partition
number. Unlike Weir's, Quix's interval join matches a pair only when its two
records are processed in event-time order (each side searches ``[ts - bound, ts]``
of the other's state): a person processed after a later-stamped auction of theirs,
or the reverse, is never joined. ``--join state`` runs q3 as a join written by hand
in keyed state instead (persons and auctions re-keyed by seller through one
repartition topic; each seller's state holds the person, or the auctions waiting for
them), which matches whatever the order. q8: Quix has
no window join, so it is a tumbling window over persons and auctions re-keyed by
person id (one repartition topic), reduced to the person and whether they opened
an auction, emitted when the window closes: the window join's rows.

Usage: python quix_app.py --query q1 --bootstrap B --input IN --output OUT --group G
       --state-dir D [--guarantee exactly-once|at-least-once] [--join interval|state]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root

from quixstreams import Application

from benchmarks.nexmark.spec import (
    OUT_OF_ORDERNESS_S,
    Q3_WITHIN_S,
    Q5_SIZE_MS,
    Q5_SLIDE_MS,
    Q7_SIZE_MS,
    Q8_SIZE_MS,
    higher_bid,
    is_auction,
    is_bid,
    is_person,
    more_bids,
    q1_map,
    q2_filter,
    q2_project,
    q3_auction,
    q3_person,
    q3_row,
    q8_rows,
)

GRACE_MS = int(OUT_OF_ORDERNESS_S * 1000)
Q3_WITHIN_MS = int(Q3_WITHIN_S * 1000)


def _event_time(value, headers, timestamp, timestamp_type) -> int:
    return value["ts"]


def _count(value: dict, state) -> dict:
    n = state.get("n", 0) + 1
    state.set("n", n)
    return {"key": str(value["auction"]), "count": n, "ts": value["ts"]}


def _running(pick):
    def update(value: dict, state) -> dict:
        best = state.get("best")
        best = value if best is None else pick(best, value)
        state.set("best", best)
        return best

    return update


def _person_id(r: dict) -> int:
    """The person a q3/q8 record belongs to: a person's id, an auction's seller."""
    return r["id"] if r["type"] == "person" else r["seller"]


def _q3_by_hand(value: dict, state) -> list[dict]:
    """One seller's join: the person once they came, else the auctions waiting for them."""
    if value["type"] == "person":
        state.set("person", value)
        waiting = state.get("waiting", [])
        if waiting:
            state.delete("waiting")
        return [q3_row(a, value) for a in waiting]
    person = state.get("person")
    if person is not None:
        return [q3_row(value, person)]
    state.set("waiting", [*state.get("waiting", []), value])
    return []


def _q8_start(r: dict) -> dict:
    return {"person": r if r["type"] == "person" else None, "auction": r["type"] == "auction"}


def _q8_add(acc: dict, r: dict) -> dict:
    """One person's window so far: the person (registered once) and whether an auction came."""
    if r["type"] == "person":
        return {"person": r, "auction": acc["auction"]}
    return acc if acc["auction"] else {"person": acc["person"], "auction": True}


def _q8_emit(w: dict) -> list[dict]:
    acc = w["value"]
    if acc["person"] is None or not acc["auction"]:
        return []
    return q8_rows((w["start"], w["end"]), [acc["person"]])


def build(
    app: Application, query: str, input_topic: str, output_topic: str, join: str = "interval"
) -> None:
    src = app.topic(
        input_topic,
        value_deserializer="json",
        key_deserializer="bytes",
        timestamp_extractor=_event_time,
    )
    # After group_by (q5, q7, q3, q8) the key is an int (window end, seller): JSON-encode it.
    key_format = "json" if query in ("q5", "q7", "q3", "q8") else "bytes"
    out = app.topic(output_topic, value_serializer="json", key_serializer=key_format)
    sdf = app.dataframe(src)
    if query == "q0":
        pass
    elif query == "q1":
        sdf = sdf.filter(is_bid).apply(q1_map)
    elif query == "q2":
        sdf = sdf.filter(q2_filter).apply(q2_project)
    elif query == "count":
        sdf = sdf.filter(is_bid).apply(_count, stateful=True)
    elif query == "q5":
        sdf = sdf.filter(is_bid)
        sdf = (
            sdf.hopping_window(duration_ms=Q5_SIZE_MS, step_ms=Q5_SLIDE_MS, grace_ms=GRACE_MS)
            .count()
            .final(closing_strategy="partition")
        )
        sdf = sdf.apply(
            lambda v, key, ts, headers: {
                "window_start": v["start"],
                "window_end": v["end"],
                "auction": int(key),
                "count": v["value"],
            },
            metadata=True,
        )
        sdf = sdf.group_by(lambda v: v["window_end"], name="by-window")
        sdf = sdf.apply(_running(more_bids), stateful=True)
    elif query == "q7":
        sdf = sdf.filter(is_bid).apply(
            lambda r: {"auction": r["auction"], "bidder": r["bidder"], "price": r["price"]}
        )
        sdf = (
            sdf.tumbling_window(duration_ms=Q7_SIZE_MS, grace_ms=GRACE_MS)
            .reduce(reducer=higher_bid, initializer=lambda v: v)
            .final(closing_strategy="partition")
        )
        sdf = sdf.apply(
            lambda v: {
                "window_start": v["start"],
                "window_end": v["end"],
                "auction": v["value"]["auction"],
                "bidder": v["value"]["bidder"],
                "price": v["value"]["price"],
            }
        )
        sdf = sdf.group_by(lambda v: v["window_end"], name="by-window")
        sdf = sdf.apply(_running(higher_bid), stateful=True)
    elif query == "q3" and join == "state":
        sdf = sdf.filter(lambda r: q3_auction(r) or q3_person(r))
        sdf = sdf.group_by(_person_id, name="by-seller")
        sdf = sdf.apply(_q3_by_hand, stateful=True, expand=True)
    elif query == "q3":
        auctions = sdf.filter(q3_auction).group_by(lambda a: a["seller"], name="by-seller")
        persons = sdf.filter(q3_person).group_by(lambda p: p["id"], name="by-id")
        sdf = auctions.join_interval(
            persons,
            how="inner",
            on_merge=q3_row,
            grace_ms=Q3_WITHIN_MS,
            backward_ms=Q3_WITHIN_MS,
            forward_ms=Q3_WITHIN_MS,
        )
    elif query == "q8":
        sdf = sdf.filter(lambda r: is_person(r) or is_auction(r))
        sdf = sdf.group_by(_person_id, name="by-person")
        sdf = (
            sdf.tumbling_window(duration_ms=Q8_SIZE_MS, grace_ms=GRACE_MS)
            .reduce(reducer=_q8_add, initializer=_q8_start)
            .final(closing_strategy="partition")
        )
        sdf = sdf.apply(_q8_emit, expand=True)
    else:
        raise SystemExit(f"unknown query {query}")
    sdf.to_topic(out)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--query", required=True)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--guarantee", default="exactly-once")
    p.add_argument("--join", choices=("interval", "state"), default="interval")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=1.0,
        processing_guarantee=args.guarantee,
        state_dir=args.state_dir,
        loglevel="WARNING",
        use_changelog_topics=True,
    )
    build(app, args.query, args.input, args.output, args.join)
    app.run()  # handles SIGTERM/SIGINT: commits and exits
    return 0


if __name__ == "__main__":
    sys.exit(main())
