"""Serialization of state values: explicit, fast, pluggable.

JSON (orjson) is the default for state values, raw bytes are stored as they
are; anything else can be plugged in with an object that has ``dumps`` and
``loads``. A value is serialized once per write, when an operator stores it
(`weir.state.epoch.EpochBuffer.put`): a value ``dumps`` refuses is refused at the
record that made it, and the bytes are the ones the checkpoint later writes.

``dumps`` raises for a value it cannot store faithfully. orjson already refuses
integers beyond 64 bits, dict keys that are not strings and types it does not
know; it writes NaN and infinity as ``null``, silently, so `JsonSerde` refuses
those itself (see `_has_non_finite`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any, Protocol

import orjson


class Serde(Protocol):
    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


def _as_plain(value: Any) -> Any:
    """What orjson writes for a type the standard library's encoder does not know:
    dataclasses as their fields, enums as their values, anything else as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    return str(value)


# The standard library's C encoder refuses non-finite floats (allow_nan=False).
_STRICT = json.JSONEncoder(allow_nan=False, check_circular=False, default=_as_plain)


def _has_non_finite(value: Any) -> bool:
    """Does ``value`` hold a NaN or infinity anywhere? Asked only when orjson's output
    contains ``null`` (which is what it writes for them), so values without None pay
    one substring search; the walk itself runs in C."""
    try:
        _STRICT.encode(value)
    except ValueError:
        return True
    return False


def _dumps_json(value: Any) -> bytes:
    data = orjson.dumps(value)
    # Spelled for speed (instructions counted): ``b"null" in data`` first tries the
    # needle as an integer and builds a TypeError; ``partition`` takes one argument.
    if data.partition(b"null")[1] and _has_non_finite(value):
        raise ValueError("NaN or infinity is not a JSON number (orjson would write null)")
    # orjson's result keeps its ~4 KB build buffer allocated; state values are kept
    # for a checkpoint, so keep an exact-size copy instead (100k values: 410 MB ->
    # 10 MB of RSS, measured); formatting copies in a third of memoryview's time.
    return b"%b" % (data,)


class JsonSerde:
    """orjson: dicts, lists, str, int (64 bits), finite float, bool, None."""

    dumps = staticmethod(_dumps_json)
    loads = staticmethod(orjson.loads)


class BytesSerde:
    """Values that are already bytes."""

    @staticmethod
    def dumps(value: bytes) -> bytes:
        if not isinstance(value, bytes):
            raise TypeError(f"bytes state needs bytes values, got {type(value).__name__}")
        return value

    @staticmethod
    def loads(data: bytes) -> bytes:
        return data


def serde_for(spec: str | Serde) -> Serde:
    """``"json"``, ``"bytes"`` or an object with ``dumps``/``loads``."""
    if spec == "json":
        return JsonSerde()
    if spec == "bytes":
        return BytesSerde()
    if isinstance(spec, str) or not (hasattr(spec, "dumps") and hasattr(spec, "loads")):
        raise ValueError(f"serde {spec!r}: expected 'json', 'bytes' or an object with dumps/loads")
    return spec
