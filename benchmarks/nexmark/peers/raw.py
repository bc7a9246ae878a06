"""The Python limit: a hand-written confluent-kafka consume → transform → produce loop.

Stateless queries only (q0, q1, q2 of `benchmarks/nexmark/spec.py`): batch
consume, ``orjson`` decode, the query's function, encode, produce, and about
once a second flush the producer and commit the consumer's positions
(at-least-once, like `benchmarks/raw_loop.py`, whose client settings it
copies). No framework, no threads, no per-record error handling on the fast path.

Usage: python raw.py --query q1 --bootstrap B --input IN --output OUT --group G
Runs until SIGTERM/SIGINT, then flushes, commits and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root

import orjson
from confluent_kafka import Consumer, Producer

from benchmarks.nexmark.spec import is_bid, q1_map, q2_filter, q2_project

COMMIT_INTERVAL_S = 1.0


def _identity(r: Any) -> Any:
    return r


def _always(_r: Any) -> bool:
    return True


QUERIES = {  # query -> (filter, map)
    "q0": (_always, _identity),
    "q1": (is_bid, q1_map),
    "q2": (q2_filter, q2_project),
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--query", required=True, choices=sorted(QUERIES))
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--batch", type=int, default=2000)
    args = p.parse_args()
    keep, fn = QUERIES[args.query]
    common = {"bootstrap.servers": args.bootstrap, "client.id": f"raw-{args.group}"}
    consumer = Consumer(
        {
            **common,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "queued.max.messages.kbytes": 16384,
            "fetch.queue.backoff.ms": 10,
        }
    )
    producer = Producer(
        {
            **common,
            "linger.ms": 5,
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 500000,
        }
    )
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    consumer.subscribe([args.input])
    out = args.output
    consume, produce, poll = consumer.consume, producer.produce, producer.poll
    loads, dumps = orjson.loads, orjson.dumps
    next_commit = time.monotonic() + COMMIT_INTERVAL_S
    dirty = False
    try:
        while not stopping:
            msgs = consume(args.batch, 0.1)
            if msgs:
                dirty = True
                for m in msgs:
                    if m.error() is not None:
                        print(f"raw: consumer: {m.error().str()}", file=sys.stderr)
                        continue
                    r = loads(m.value())
                    if keep(r):
                        value = dumps(fn(r))
                        while True:
                            try:
                                produce(out, value, m.key())
                                break
                            except BufferError:
                                poll(0.05)
                poll(0)
            if dirty and time.monotonic() >= next_commit:
                producer.flush()  # outputs acknowledged before their inputs are committed
                consumer.commit(asynchronous=True)
                dirty = False
                next_commit = time.monotonic() + COMMIT_INTERVAL_S
        producer.flush(30)
        if dirty:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
