"""Writing test input: records to Kafka messages, all at once or at a steady rate.

Tests produce plain records (dicts, or their own objects) and say how each becomes a
message: ``value`` maps a record to its JSON value (default: the record itself),
``key`` to its key (str or bytes), ``partition`` to its partition (or one number
pins them all). `produce_json` in tests/kafka_fixture.py writes a list at once; a
`Feeder` writes records on a thread at ``rate`` per second while the test starts,
kills and restarts workers. Both use an idempotent producer, so each partition
keeps the order records were given in.
"""

from __future__ import annotations

import functools
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any

from confluent_kafka import KafkaError, Producer

ValueFn = Callable[[Any], Any]
KeyFn = Callable[[Any], str | bytes | None]
PartitionFn = Callable[[Any], int]
_DONE = object()  # the end of a feed


def numbered(first: int = 0, pad: int = 0) -> Iterator[dict]:
    """Endless ``{"n": n}`` records from ``first`` on (with ``pad`` bytes of padding)."""
    padding = {"pad": "x" * pad} if pad else {}
    return ({"n": n, **padding} for n in itertools.count(first))


def n_key(record: dict) -> str:
    """A record's ``n`` as its key."""
    return str(record["n"])


def message(
    record: Any,
    value: ValueFn | None = None,
    key: KeyFn | None = None,
    partition: int | PartitionFn | None = None,
) -> dict[str, Any]:
    """The ``Producer.produce`` arguments (but the topic) for one record."""
    out: dict[str, Any] = {
        "value": json.dumps(record if value is None else value(record)).encode(),
        "key": None if key is None else key(record),
    }
    if partition is not None:
        out["partition"] = partition if isinstance(partition, int) else partition(record)
    return out


def send(producer: Producer, topic: str, **fields: Any) -> None:
    """Produce one message, letting deliveries drain the local queue while it is full."""
    while True:
        try:
            producer.produce(topic, **fields)
            return
        except BufferError:
            producer.poll(0.05)


class Feeder(threading.Thread):
    """Produces ``records`` to ``topic`` at ``rate`` per second, on a thread.

    Paced by the clock: ``t`` seconds after the start, the first ``1 + t * rate``
    records are produced. ``records`` may be endless (an iterator): then only `stop`
    ends the feed. ``sent`` counts records produced; ``where`` maps each record's
    index in the feed to where it landed (partition, offset), from delivery reports.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        records: Iterable[Any],
        rate: float,
        value: ValueFn | None = None,
        key: KeyFn | None = None,
        partition: int | PartitionFn | None = None,
    ) -> None:
        super().__init__(name="feeder", daemon=True)
        self.topic, self.rate = topic, rate
        self.total = len(records) if isinstance(records, Sized) else None
        self._records = iter(records)
        self._message = functools.partial(message, value=value, key=key, partition=partition)
        self.sent = 0
        self.where: dict[int, tuple[int, int]] = {}
        self.errors: list[str] = []
        self._halt = threading.Event()
        self.producer: Producer | None = Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
        )

    def _delivered(self, index: int, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.errors.append(err.str())
        else:
            self.where[index] = (msg.partition(), msg.offset())

    def run(self) -> None:
        """Each round: produce what is due by now, then serve delivery reports."""
        producer = self.producer
        start = time.monotonic()
        retry: Any = _DONE  # a record the full local queue refused
        while not self._halt.is_set():
            due = int((time.monotonic() - start) * self.rate) + 1
            while self.sent < due and not self._halt.is_set():
                record = retry if retry is not _DONE else next(self._records, _DONE)
                if record is _DONE:
                    return  # the feed is done
                retry = _DONE
                try:
                    producer.produce(
                        self.topic,
                        **self._message(record),
                        on_delivery=functools.partial(self._delivered, self.sent),
                    )
                except BufferError:
                    retry = record
                    producer.poll(0.05)
                    continue
                self.sent += 1
            producer.poll(0.005)

    def finish(self, timeout: float | None = None) -> int:
        """Wait until every record is produced and delivered (default: the time the
        rest of the feed takes, plus 30 s); returns how many there were."""
        assert self.total is not None, "an endless feed ends with stop()"
        if timeout is None:
            timeout = (self.total - self.sent) / self.rate + 30
        self.join(timeout)
        assert not self.is_alive(), f"feeder stuck at {self.sent} of {self.total}"
        assert self.sent == self.total, f"feeder stopped at {self.sent} of {self.total}"
        return self._delivered_all()

    def stop(self, timeout: float = 30.0) -> int:
        """Stop producing now and wait until what was produced is delivered; returns
        how many records were produced."""
        self._halt.set()
        self.join(timeout)
        assert not self.is_alive(), "feeder thread did not stop"
        return self._delivered_all(timeout)

    def _delivered_all(self, timeout: float = 30.0) -> int:
        left = self.producer.flush(timeout)
        assert left == 0, f"{left} input records not delivered within {timeout}s"
        assert not self.errors, f"input delivery failed: {self.errors[:3]}"
        assert len(self.where) == self.sent, f"{len(self.where)} of {self.sent} delivered"
        return self.sent

    def halt(self) -> None:
        """Stop for good (also after a failure, or before it started): nothing left
        queued, client closed."""
        self._halt.set()
        if self.ident is not None:
            self.join(10)
        if self.producer is not None:
            self.producer.purge()
            self.producer = None  # destroyed with its last reference
