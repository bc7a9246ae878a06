"""The baseline: a hand-written confluent-kafka consume → map → produce loop.

This is the practical ceiling for one Python process doing Weir's job: no
framework, no threads handing batches around, just librdkafka's batch consume,
``orjson`` and ``produce`` in one tight loop. `benchmarks/throughput.py` runs it
as a separate process, like the Weir worker, and compares the two; the Nexmark
raw loop (`benchmarks/nexmark/peers/raw.py`) is this loop with a query's
function (`run` takes any ``transform``; one returning None drops the record).

It is at-least-once, as tight as that allows: about once a second it flushes
the producer (every output consumed so far is acknowledged) and then commits
the consumer's positions asynchronously — the same guarantee as Weir's
``--guarantee at-least-once`` (flush, then commit), without per-record delivery
callbacks. The client settings match the Weir worker's (batch size, fetch
queue and its backoff, linger, idempotence, partitioner), so the comparison
measures framework overhead, not librdkafka tuning.

Usage: ``python benchmarks/raw_loop.py --bootstrap B --input IN --output OUT --group G``.
Runs until SIGTERM/SIGINT, then commits and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer

COMMIT_INTERVAL_S = 1.0


def double_v(r: dict) -> dict:
    """The throughput benchmark's map (as in ``jobs/map_json.py``)."""
    return {**r, "x": r["v"] * 2}


def arguments(description: str) -> argparse.ArgumentParser:
    """The loop's command-line flags (a caller may add its own)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--batch", type=int, default=2000, help="records per consume() call")
    p.add_argument(
        "--kafka",
        action="append",
        default=[],
        metavar="consumer.KEY=VALUE|producer.KEY=VALUE",
        help="override a librdkafka setting of one client (for experiments)",
    )
    return p


def _overrides(settings: list[str], role: str) -> dict[str, str]:
    out = {}
    for item in settings:
        key, _, value = item.partition("=")
        head, _, rest = key.partition(".")
        if head == role:
            out[rest] = value
    return out


def _slow_batch(
    msgs: list[Any], out: str, transform: Callable[[Any], Any], produce: Any, poll: Any
) -> None:
    """Per-record error handling, taken only when the fast path raised on a batch.

    The fast path does no per-record checks at all; this one skips consumer
    error events and waits out a full producer queue. Records before the
    failure were already produced, so the batch resumes where the fast path
    stopped (the caller passes only the remaining messages).
    """
    for m in msgs:
        err = m.error()
        if err is not None:
            if err.fatal():
                raise KafkaException(err)
            print(f"raw_loop: consumer: {err.str()}", file=sys.stderr)
            continue
        r = transform(orjson.loads(m.value()))
        if r is None:
            continue
        value = orjson.dumps(r)
        while True:
            try:
                produce(out, value, m.key())
                break
            except BufferError:
                poll(0.05)


def run(args: argparse.Namespace, transform: Callable[[Any], Any]) -> int:
    """Consume ``args.input``, produce ``transform(record)`` (JSON both ways) to
    ``args.output``, commit about once a second; until SIGTERM/SIGINT."""
    common = {"bootstrap.servers": args.bootstrap, "client.id": f"raw-{args.group}"}
    consumer = Consumer(
        {
            **common,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "queued.max.messages.kbytes": 16384,
            # librdkafka >= 2.3 waits this long before fetching again once the local
            # queue was full (default 1000 ms): on a backlog the loop would idle about
            # half the time. A short backoff keeps the prefetch queue fed.
            "fetch.queue.backoff.ms": 10,
            **_overrides(args.kafka, "consumer"),
        }
    )
    producer = Producer(
        {
            **common,
            "linger.ms": 5,
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 500000,
            **_overrides(args.kafka, "producer"),
        }
    )
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    consumer.subscribe([args.input])

    out, batch = args.output, args.batch
    consume, produce, poll = consumer.consume, producer.produce, producer.poll
    loads, dumps = orjson.loads, orjson.dumps
    clock = time.monotonic
    next_commit = clock() + COMMIT_INTERVAL_S
    dirty = False
    try:
        while not stopping:
            msgs = consume(batch, 0.1)
            if msgs:
                dirty = True
                i = 0
                try:
                    # The whole loop: no per-record error checks (an error event has
                    # value None, so loads raises and the slow path handles the rest).
                    for i, m in enumerate(msgs):  # noqa: B007 - i is read in except
                        r = transform(loads(m.value()))
                        if r is not None:
                            produce(out, dumps(r), m.key())
                except (TypeError, orjson.JSONDecodeError, BufferError):
                    _slow_batch(msgs[i:], out, transform, produce, poll)
                poll(0)
            if dirty and clock() >= next_commit:
                producer.flush()  # outputs acknowledged before their inputs are committed
                consumer.commit(asynchronous=True)
                dirty = False
                next_commit = clock() + COMMIT_INTERVAL_S
        producer.flush(30)
        if dirty:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(run(arguments(__doc__.splitlines()[0]).parse_args(), double_v))
