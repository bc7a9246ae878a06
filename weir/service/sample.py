"""Sample sensor readings, the seed example's format: ``{"tag", "value", "ts"}``.

Two ways to write them: `produce_readings` writes a prepared batch (``weir demo``,
``weir produce-sample``), `stream_readings` writes at a steady rate, each reading
stamped with the wall clock when it is written (``weir produce-sample --rate``), so a
job's event-time windows close in real time, as with live sensors.
"""

from __future__ import annotations

import random
import threading
import time

import orjson
from confluent_kafka import Producer

from weir.service.exceptions import KafkaUnavailable

TICK_S = 0.1  # a steady stream writes what is due every tick


def _reading(rng: random.Random, tags: int, ts: int) -> dict:
    return {
        "tag": f"sensor{rng.randrange(1, tags + 1)}",
        "value": round(rng.gauss(30.0, 5.0), 1),
        "ts": ts,
    }


def readings(
    count: int,
    tags: int = 5,
    seed: int = 7,
    start_ms: int | None = None,
    spacing_ms: int = 10,
) -> list[dict]:
    """``count`` readings over ``tags`` sensors, one every ``spacing_ms`` of event time."""
    rng = random.Random(seed)
    start = int(time.time() * 1000) if start_ms is None else start_ms
    return [_reading(rng, tags, start + spacing_ms * i) for i in range(count)]


class _Deliveries:
    """Delivery reports of one producer: the first error, if any."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def __call__(self, err, _msg) -> None:
        if err is not None:
            self.errors.append(err.str())


def _produce(producer: Producer, topic: str, record: dict, deliveries: _Deliveries) -> None:
    while True:
        try:
            producer.produce(
                topic, orjson.dumps(record), record["tag"].encode(), on_delivery=deliveries
            )
            return
        except BufferError:
            producer.poll(0.1)


def produce_readings(
    bootstrap: str, topic: str, records: list[dict], timeout_s: float = 30.0
) -> None:
    """Write readings keyed by tag; raise if any is not acknowledged in time."""
    deliveries = _Deliveries()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for record in records:
        _produce(producer, topic, record, deliveries)
    left = producer.flush(timeout_s)
    if left or deliveries.errors:
        raise RuntimeError(
            f"{left} readings unacknowledged, {len(deliveries.errors)} failed"
            f" ({deliveries.errors[:1]}) on {topic}"
        )


def stream_readings(
    bootstrap: str,
    topic: str,
    rate: float,
    count: int | None = None,
    tags: int = 5,
    stop: threading.Event | None = None,
    seed: int = 7,
    timeout_s: float = 30.0,
) -> int:
    """Write ``rate`` readings a second until ``count`` are written (None: until
    ``stop`` is set); returns how many were written and acknowledged.

    Steps, every `TICK_S`: (1) write the readings due since the start (``rate`` times
    the elapsed time, less those written), each with the wall clock as its ``ts``, so
    event time advances with real time and nothing arrives late; (2) serve delivery
    reports, stopping at the first failure; (3) sleep to the next tick. A slow broker
    delays readings (they keep the time they are written at), it never bunches them
    into one burst of stale event times.
    """
    stop = stop or threading.Event()
    rng = random.Random(seed)
    deliveries = _Deliveries()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    start, written = time.monotonic(), 0
    while not stop.is_set() and (count is None or written < count):
        due = int((time.monotonic() - start) * rate) + 1  # Step 1
        if count is not None:
            due = min(due, count)
        now_ms = int(time.time() * 1000)
        for _ in range(written, due):
            _produce(producer, topic, _reading(rng, tags, now_ms), deliveries)
        written = max(written, due)
        producer.poll(0)  # Step 2
        if deliveries.errors:
            break
        stop.wait(TICK_S)  # Step 3
    left = producer.flush(timeout_s)
    if left or deliveries.errors:
        raise KafkaUnavailable(
            f"writing readings to {topic} on {bootstrap} failed: {left} unacknowledged,"
            f" {len(deliveries.errors)} refused ({', '.join(deliveries.errors[:1]) or 'timeout'})"
        )
    return written
