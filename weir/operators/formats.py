"""Value and key formats: how record bytes become Python values and back.

Decoding and encoding run once per record on the hot path, so each format is a
plain function (orjson for JSON, identity for bytes) looked up once per
operator, never per record.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

import orjson

from weir.operators.exceptions import JobDefinitionError


class ValueFormat(StrEnum):
    """How a topic's record values are encoded."""

    JSON = "json"
    BYTES = "bytes"


VALUE_FORMATS = tuple(f.value for f in ValueFormat)

Decoder = Callable[[bytes], Any]
Encoder = Callable[[Any], bytes]


def _identity(data: Any) -> Any:
    return data


def _encode_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"a bytes sink needs bytes or str values, got {type(value).__name__}")


def check_format(value: str, where: str) -> ValueFormat:
    """Validate a ``value=`` argument at job-definition time."""
    if value not in VALUE_FORMATS:
        raise JobDefinitionError(
            f"{where}: value={value!r} is not a known format; expected one of {VALUE_FORMATS}"
        )
    return ValueFormat(value)


def decoder(fmt: ValueFormat) -> Decoder:
    """The decode function for a format: raises on bad input (the caller dead-letters it)."""
    return orjson.loads if fmt is ValueFormat.JSON else _identity


def encoder(fmt: ValueFormat) -> Encoder:
    """The encode function for a format."""
    return orjson.dumps if fmt is ValueFormat.JSON else _encode_bytes


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
