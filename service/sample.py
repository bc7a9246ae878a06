"""Sample sensor readings, the seed example's format: ``{"tag", "value", "ts"}``."""

from __future__ import annotations

import random
import time

import orjson
from confluent_kafka import Producer


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
    return [
        {
            "tag": f"sensor{rng.randrange(1, tags + 1)}",
            "value": round(rng.gauss(30.0, 5.0), 1),
            "ts": start + spacing_ms * i,
        }
        for i in range(count)
    ]


def produce_readings(
    bootstrap: str, topic: str, records: list[dict], timeout_s: float = 30.0
) -> None:
    """Write readings keyed by tag; raise if any is not acknowledged in time."""
    errors: list[str] = []

    def on_delivery(err, _msg) -> None:
        if err is not None:
            errors.append(err.str())

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for record in records:
        while True:
            try:
                producer.produce(
                    topic, orjson.dumps(record), record["tag"].encode(), on_delivery=on_delivery
                )
                break
            except BufferError:
                producer.poll(0.1)
    left = producer.flush(timeout_s)
    if left or errors:
        raise RuntimeError(
            f"{left} readings unacknowledged, {len(errors)} failed ({errors[:1]}) on {topic}"
        )
