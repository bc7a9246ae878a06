"""The Nexmark queries on Faust (faust-streaming; run with benchmarks/.peers/faust's Python).

Settings: ``processing_guarantee`` exactly_once (or at_least_once), commits
every 1 s (``broker_commit_interval=1.0``; the message-count trigger is
disabled so the interval is the same as every other system's), orjson
installed (Faust's JSON codec uses it when present), the web server off, the
in-memory table store backed by its changelog topic (RocksDB stores need
python-rocksdb/rocksdict builds the faust-streaming extras no longer ship).

Queries: q0, q1, q2 and the running count (a Faust Table). q5 and q7 are not
implemented: Faust's windowed tables keep per-window values but fire nothing
when an event-time window ends — there is no watermark; window-close
callbacks run from a processing-time cleanup timer, outside the stream's
commit — so "emit each window's result once it is complete" cannot be
expressed faithfully.

Configuration comes from the environment (Faust's CLI owns argv):
NEXMARK_QUERY, NEXMARK_BOOTSTRAP, NEXMARK_IN, NEXMARK_OUT, NEXMARK_GROUP,
NEXMARK_STATE_DIR, NEXMARK_PARTITIONS, NEXMARK_GUARANTEE (exactly-once|at-least-once).
Usage: NEXMARK_...=... python faust_app.py worker -l warning
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root

import faust

from benchmarks.nexmark.spec import q1_map, q2_filter, q2_project

QUERY = os.environ["NEXMARK_QUERY"]
GUARANTEE = os.environ.get("NEXMARK_GUARANTEE", "exactly-once").replace("-", "_")
PARTITIONS = int(os.environ.get("NEXMARK_PARTITIONS", "4"))

if QUERY not in ("q0", "q1", "q2", "count"):
    raise SystemExit(f"faust: query {QUERY} is not implemented (no event-time window firing)")

app = faust.App(
    os.environ["NEXMARK_GROUP"],
    broker=f"kafka://{os.environ['NEXMARK_BOOTSTRAP']}",
    processing_guarantee=GUARANTEE,
    broker_commit_interval=1.0,
    broker_commit_every=1_000_000_000,
    consumer_auto_offset_reset="earliest",
    topic_partitions=PARTITIONS,
    store="memory://",
    datadir=os.environ.get("NEXMARK_STATE_DIR", "faust-data"),
    web_enabled=False,
    producer_linger=0.005,
    **json.loads(os.environ.get("NEXMARK_FAUST_SETTINGS", "{}")),  # for experiments
)
source = app.topic(
    os.environ["NEXMARK_IN"], key_type=bytes, key_serializer="raw", value_serializer="json"
)
sink = app.topic(os.environ["NEXMARK_OUT"], key_serializer="raw", value_serializer="json")

if QUERY == "count":
    counts = app.Table("bids-per-auction", default=int, partitions=PARTITIONS)

    @app.agent(source)
    async def count(stream):
        async for key, r in stream.items():
            if r["type"] != "bid":
                continue
            k = str(r["auction"])
            counts[k] += 1
            await sink.send(key=key, value={"key": k, "count": counts[k], "ts": r["ts"]})

else:
    if QUERY == "q0":
        keep, fn = (lambda r: True), (lambda r: r)
    elif QUERY == "q1":
        keep, fn = (lambda r: r["type"] == "bid"), q1_map
    else:
        keep, fn = q2_filter, q2_project

    @app.agent(source)
    async def stateless(stream):
        async for key, r in stream.items():
            if keep(r):
                await sink.send(key=key, value=fn(r))


if __name__ == "__main__":
    app.main()
