"""Reading a topic back in tests: one reader for one-shot reads, incremental reads
and reads on a background thread.

A `TopicReader` assigns every partition of a topic directly (no group join, under a
fresh group id that never commits), from the beginning or from given offsets, and
keeps what it read as plain dicts::

    {"key", "value", "partition", "offset", "timestamp", "headers", "arrived"}

(``timestamp``: the record's, epoch ms; ``arrived``: the wall-clock time it was
read, for latencies). It knows which partitions it has read to their end (for
read_committed: their last stable offset). A `TopicWatcher` keeps a reader going on
a thread while the test acts, so the test can wait for what arrives.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from tests.waiting import seconds_until


class TopicReader:
    """Reads ``topic`` and keeps every record it got in ``records``.

    With ``decode_json`` values are parsed JSON and UTF-8 keys text (a binary key
    stays bytes); otherwise both stay bytes. ``start`` maps partitions to the offsets
    to read from (default: every partition from its beginning); ``config`` adds
    consumer settings (e.g. a short ``fetch.wait.max.ms`` for arrival times).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        read_committed: bool = True,
        decode_json: bool = True,
        start: dict[int, int] | None = None,
        config: dict[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.topic = topic
        self.decode_json = decode_json
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"weir-test-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed" if read_committed else "read_uncommitted",
                **(config or {}),
            }
        )
        try:
            meta = self.consumer.list_topics(topic, timeout=timeout).topics[topic]
            if meta.error is not None:
                raise KafkaException(meta.error)
        except BaseException:
            self.consumer.close()
            raise
        self.partitions = sorted(meta.partitions)
        offsets = start if start is not None else dict.fromkeys(self.partitions, OFFSET_BEGINNING)
        self.consumer.assign([TopicPartition(topic, p, off) for p, off in offsets.items()])
        self.records: list[dict] = []
        self.at_end: dict[int, int] = {}  # partition -> the offset its end was reported at
        self._last_read = 0  # records the last fetch brought

    def read(self, timeout: float, limit: int = 5000) -> int:
        """One fetch: wait up to ``timeout`` s for records, keep at most ``limit`` of
        them; returns how many arrived. Raises KafkaException on a consumer error."""
        msgs = self.consumer.consume(limit, max(0.0, timeout))
        now = time.time()
        self._last_read = n = 0
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(err)
                self.at_end[m.partition()] = m.offset()
                continue
            self.at_end.pop(m.partition(), None)
            self.records.append(self._record(m, now))
            n += 1
        self._last_read = n
        return n

    def poll(self, seconds: float) -> int:
        """Keep reading for ``seconds``; returns how many records arrived."""
        deadline = time.monotonic() + seconds
        n = 0
        while True:
            n += self.read(min(0.1, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                return n

    def read_to_end(self) -> bool:
        """Has every partition been read to its end — the end offset the broker gives
        this reader's isolation level (for read_committed: the last stable offset)?

        A partition is there once the reader's position (past every record and
        transaction marker it was handed) or an end-of-partition event is at or past that
        end. The event alone is not enough: librdkafka sometimes reports the end of a
        read_committed partition early, and after one it reports none again while only
        transaction markers follow (as when a worker's transactions keep being aborted),
        so a reader waiting for it would wait for good. The broker is asked only when the
        last fetch brought nothing new or every partition has reported an end."""
        if self._last_read and len(self.at_end) != len(self.partitions):
            return False
        tps = [TopicPartition(self.topic, p) for p in self.partitions]
        positions = {tp.partition: tp.offset for tp in self.consumer.position(tps)}
        for tp in tps:
            _, end = self.consumer.get_watermark_offsets(tp, 10)
            if max(positions[tp.partition], self.at_end.get(tp.partition, -1)) < end:
                return False
        return True

    def progress(self) -> str:
        """Per partition: the last offset read, the position, where its end was reported
        and the end the broker gives now (for failure messages)."""
        last: dict[int, int] = {}
        for r in self.records:
            last[r["partition"]] = r["offset"]
        parts = []
        for p in self.partitions:
            tp = TopicPartition(self.topic, p)
            try:
                position = self.consumer.position([tp])[0].offset
                _, end = self.consumer.get_watermark_offsets(tp, 10)
            except KafkaException as exc:
                position = end = f"? ({exc})"
            parts.append(
                f"p{p} last {last.get(p)} position {position}"
                f" end-reported {self.at_end.get(p)} end {end}"
            )
        return f"{len(self.records)} records; " + ", ".join(parts)

    def drain(self, timeout: float = 30.0) -> None:
        """Until every partition is read to its end; fails after ``timeout`` s."""
        self.poll(0.3)
        deadline = time.monotonic() + timeout
        while not self.read_to_end():
            assert time.monotonic() < deadline, (
                f"{self.topic} not read to its end in {timeout}s: {self.progress()}"
            )
            self.poll(0.2)

    def values(self) -> list[Any]:
        return [r["value"] for r in self.records]

    def close(self) -> None:
        self.consumer.close()

    def _record(self, msg: Any, arrived: float) -> dict:
        key, value = msg.key(), msg.value()
        if self.decode_json:
            with contextlib.suppress(UnicodeDecodeError):  # a binary key stays bytes
                key = key.decode() if key is not None else None
            value = json.loads(value) if value is not None else None
        return {
            "key": key,
            "value": value,
            "partition": msg.partition(),
            "offset": msg.offset(),
            "timestamp": msg.timestamp()[1],
            "headers": msg.headers(),
            "arrived": arrived,
        }


class TopicWatcher(threading.Thread):
    """Keeps ``reader`` reading on a thread until `halt`; closes it at the end.

    ``records`` grows while the test runs (appends only, so the test may read it at
    any time); an error on the thread ends the reading and is raised by `wait`. One
    fetch waits up to ``every`` seconds for a batch, which bounds how late a record's
    ``arrived`` time can be.
    """

    def __init__(self, reader: TopicReader, every: float = 0.2) -> None:
        super().__init__(name=f"watch-{reader.topic}", daemon=True)
        self.reader = reader
        self.every = every
        self.records = reader.records
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                self.reader.read(self.every)
        except BaseException as exc:
            self.error = exc
        finally:
            self.reader.close()

    def wait(
        self,
        count: int,
        timeout: float,
        check: Callable[[], object] | None = None,
        detail: Callable[[], str] | None = None,
    ) -> float:
        """Until ``count`` records have been read; returns the seconds it took."""

        def healthy() -> None:
            if self.error is not None:
                raise AssertionError(f"reading {self.reader.topic} failed: {self.error!r}")
            if check is not None:
                check()

        return seconds_until(
            lambda: len(self.records) >= count,
            timeout,
            f"{count} records on {self.reader.topic}",
            check=healthy,
            detail=lambda: f" (have {len(self.records)}){detail() if detail else ''}",
        )

    def halt(self) -> None:
        """Stop reading; the reader closes (at once if the thread never started)."""
        self._halt.set()
        if self.ident is None:
            self.reader.close()
        else:
            self.join(10)
