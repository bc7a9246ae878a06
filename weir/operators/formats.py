"""Record formats: how record bytes become Python values and back (serdes).

A format is a `Serde`: an object with ``serialize(value, ctx) -> bytes`` and
``deserialize(data, ctx) -> value``. Sources and sinks take one for values
(``value=``) and for keys (``key_format=``), either by name — ``"json"``,
``"bytes"``, ``"str"`` — or as an object: a user's own class, or the
schema-registry serdes of `operators.schemas` (Avro, Protobuf, JSON Schema).

Decoding and encoding run once per record on the hot path, so an operator
instance *binds* its serde once (`decoder`, `encoder`) into a one-argument
function and calls only that per record: ``orjson.loads`` for JSON, the
identity for bytes. A serde may offer that binding itself — methods
``decoder(ctx)`` and ``encoder(ctx)`` returning the one-argument function —
which the built-ins do, so that per-topic work (a registry subject, a parsed
schema) happens once; otherwise ``deserialize``/``serialize`` are called with
the operator's context.

A serde that cannot reach what it needs (a schema registry that is down)
raises `SerdeUnavailable`: that is not the record's fault, so the record is
not dead-lettered; the slot fails and the worker restarts it from the last
checkpoint (its restart strategy), reading the record again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import orjson

from weir.operators.exceptions import JobDefinitionError

Decoder = Callable[[bytes], Any]
Encoder = Callable[[Any], bytes]


class SerdeUnavailable(Exception):
    """A serde could not reach a service it needs (e.g. the schema registry).

    Raised instead of a decoding error so the record is retried after a restart
    rather than sent to the dead-letter topic.
    """


@dataclass(frozen=True)
class SerdeContext:
    """Where a serde is used; fixed for an operator instance.

    ``topic``: the topic read or written; ``is_key``: the record key (True) or
    value; ``registry``: the schema registry client settings the worker was
    started with (``url`` and passthrough keys such as ``basic.auth.user.info``),
    None when it has none.
    """

    topic: str
    is_key: bool = False
    registry: Mapping[str, str] | None = field(default=None, compare=False)


@runtime_checkable
class Serde(Protocol):
    """A record format. Implement both methods; ``ctx`` says topic and key/value.

    ``deserialize`` raising fails the record (it goes to the dead-letter topic
    with reason ``decode``); ``serialize`` raising fails it with reason
    ``serialize``.
    """

    def serialize(self, value: Any, ctx: SerdeContext) -> bytes: ...

    def deserialize(self, data: bytes, ctx: SerdeContext) -> Any: ...


class _Named:
    """A built-in format: known by its name in plans and ``repr``."""

    name = ""

    def __repr__(self) -> str:
        return self.name


def _identity(data: Any) -> Any:
    return data


def _encode_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"the bytes format needs bytes or str values, got {type(value).__name__}")


def _decode_str(data: bytes) -> str:
    return data.decode()


def _encode_str(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"the str format needs str values, got {type(value).__name__}")


class JsonFormat(_Named):
    """JSON (orjson): dicts, lists, str, numbers, bool, None."""

    name = "json"

    def serialize(self, value: Any, ctx: SerdeContext) -> bytes:
        return orjson.dumps(value)

    def deserialize(self, data: bytes, ctx: SerdeContext) -> Any:
        return orjson.loads(data)

    def decoder(self, ctx: SerdeContext) -> Decoder:
        return orjson.loads

    def encoder(self, ctx: SerdeContext) -> Encoder:
        return orjson.dumps


class BytesFormat(_Named):
    """The bytes as they are; a sink also takes str (as UTF-8)."""

    name = "bytes"

    def serialize(self, value: Any, ctx: SerdeContext) -> bytes:
        return _encode_bytes(value)

    def deserialize(self, data: bytes, ctx: SerdeContext) -> Any:
        return data

    def decoder(self, ctx: SerdeContext) -> Decoder:
        return _identity

    def encoder(self, ctx: SerdeContext) -> Encoder:
        return _encode_bytes


class StrFormat(_Named):
    """UTF-8 text."""

    name = "str"

    def serialize(self, value: Any, ctx: SerdeContext) -> bytes:
        return _encode_str(value)

    def deserialize(self, data: bytes, ctx: SerdeContext) -> Any:
        return data.decode()

    def decoder(self, ctx: SerdeContext) -> Decoder:
        return _decode_str

    def encoder(self, ctx: SerdeContext) -> Encoder:
        return _encode_str


JSON, BYTES, STR = JsonFormat(), BytesFormat(), StrFormat()
BUILT_IN: dict[str, Serde] = {f.name: f for f in (JSON, BYTES, STR)}


def check_format(spec: Any, where: str, param: str = "value") -> Serde:
    """Validate a ``value=`` / ``key_format=`` argument at job-definition time: a
    built-in's name or an object with ``serialize`` and ``deserialize``."""
    if isinstance(spec, str):
        if spec in BUILT_IN:
            return BUILT_IN[spec]
    elif isinstance(spec, Serde):
        return spec
    raise JobDefinitionError(
        f"{where}: {param}={spec!r} is not a format; expected one of"
        f" {', '.join(map(repr, BUILT_IN))} or a Serde (an object with"
        " serialize(value, ctx) and deserialize(data, ctx))"
    )


def check_writable(serde: Serde, where: str) -> None:
    """A sink's format must be able to write: a serde may say why it cannot
    (``writer_problem()``, e.g. Avro without a schema)."""
    problem = getattr(serde, "writer_problem", None)
    reason = problem() if problem is not None else None
    if reason:
        raise JobDefinitionError(f"{where}: {reason}")


def needs_registry(serde: Serde) -> bool:
    """Does ``serde`` need the worker's schema registry settings?"""
    return bool(getattr(serde, "needs_registry", False))


def decoder(serde: Serde, ctx: SerdeContext) -> Decoder:
    """The function an operator calls per record to decode: raises on bad input
    (the caller dead-letters the record) or `SerdeUnavailable`."""
    bind = getattr(serde, "decoder", None)
    if bind is not None:
        return bind(ctx)
    deserialize = serde.deserialize
    return lambda data: deserialize(data, ctx)


def encoder(serde: Serde, ctx: SerdeContext) -> Encoder:
    """The function an operator calls per record to encode."""
    bind = getattr(serde, "encoder", None)
    if bind is not None:
        return bind(ctx)
    serialize = serde.serialize
    return lambda value: serialize(value, ctx)


def encode_key(key: Any) -> bytes | None:
    """Serialize a record key: bytes as is, str as UTF-8, anything else as JSON.

    The same bytes decide the key group, the output partition and (later) the
    state key, so one key always means one place.
    """
    if key is None or isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    return orjson.dumps(key)
