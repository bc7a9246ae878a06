"""Record metadata for user functions that ask for it (``with_meta=True``).

A function given ``with_meta=True`` is called as ``fn(value, meta)``, where
``meta`` is a `RecordMeta`: the element's key and event time, and where its
record was read — topic, partition, offset and the Kafka headers. Functions
that do not ask pay nothing: the operators build a `RecordMeta` only inside
their ``with_meta`` loop, and sources keep headers only when some function of
their dataflow asks for metadata.

What it describes, as in Kafka Streams' record context:

- after a source: the Kafka record;
- after ``map``/``filter``/``flat_map``/``key_by`` (inside a worker): still the
  record the element came from, with the key it has now;
- after a ``key_by`` that goes through a repartition topic: the repartition
  record (its topic, partition and offset); the source record's headers travel
  with it;
- after ``reduce``, ``aggregate``, windows and process functions: the key, the
  result's timestamp and the state's partition; the offset is that of the
  record that produced the result (none for timer outputs) and there are no
  headers (a result comes from many records).
"""

from __future__ import annotations

from typing import Any

Headers = list[tuple[str, bytes | None]]


class RecordMeta:
    """Read-only metadata of one element (see the module docstring for what it means
    after each kind of operator)."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic")

    def __init__(
        self,
        key: Any,
        timestamp: int,
        topic: str,
        partition: int,
        offset: int | None,
        headers: Headers | None,
    ) -> None:
        self.key = key  # the element's key: Kafka record key (bytes or decoded), or key_by's
        self.timestamp = timestamp  # event time, epoch ms
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.headers: Headers = headers or []

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name`` (Kafka allows repeats), None if absent."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None

    def __repr__(self) -> str:
        return (
            f"RecordMeta(key={self.key!r}, timestamp={self.timestamp}, topic={self.topic!r},"
            f" partition={self.partition}, offset={self.offset}, headers={self.headers!r})"
        )


def normalize_headers(headers: Any) -> Headers:
    """A sink's ``headers=`` result as Kafka headers: a mapping or (name, value) pairs,
    names str, values bytes, str (UTF-8) or None. Raises with what was wrong."""
    items = headers.items() if isinstance(headers, dict) else headers
    out: Headers = []
    for item in items:
        name, value = item
        if not isinstance(name, str):
            raise TypeError(f"header name {name!r} is not a str")
        if isinstance(value, str):
            value = value.encode()
        elif value is not None and not isinstance(value, bytes):
            kind = type(value).__name__
            raise TypeError(f"header {name!r} has a {kind} value; expected bytes, str or None")
        out.append((name, value))
    return out
