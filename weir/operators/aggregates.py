"""Aggregations: the built-in ones and Flink-style user aggregate functions.

``aggregate(count="count", mean=("mean", "value"), top=MyAgg())`` compiles each
field to an `AggregateFunction`: ``create`` a fresh accumulator, ``add`` a
record to it, ``merge`` two (session windows), ``result`` to emit. Built-ins
read their input with ``record[field]`` or a callable. Accumulators are stored
in keyed state, so they must be serializable by the state serde (JSON); a record whose
accumulator is not fails alone (reason ``state``, `weir.state.epoch`).
``add`` returns the new accumulator rather than mutating it, so a record whose
``add`` raises leaves the state as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any

from weir.operators.exceptions import JobDefinitionError


class AggregateFunction:
    """Subclass to define your own aggregate (Flink's ``AggregateFunction``)."""

    def create(self) -> Any:
        raise NotImplementedError

    def add(self, acc: Any, value: Any) -> Any:
        raise NotImplementedError

    def merge(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def result(self, acc: Any) -> Any:
        return acc


def _getter(field: str | Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``record[field]`` (an itemgetter: no Python frame per record), or the callable."""
    if callable(field):
        return field
    return itemgetter(field)


class Count(AggregateFunction):
    def create(self) -> int:
        return 0

    def add(self, acc: int, value: Any) -> int:
        return acc + 1

    def merge(self, a: int, b: int) -> int:
        return a + b


class Sum(AggregateFunction):
    def __init__(self, field: str | Callable[[Any], Any]) -> None:
        self.get = _getter(field)

    def create(self) -> float:
        return 0

    def add(self, acc: float, value: Any) -> float:
        return acc + self.get(value)

    def merge(self, a: float, b: float) -> float:
        return a + b


class Min(AggregateFunction):
    def __init__(self, field: str | Callable[[Any], Any]) -> None:
        self.get = _getter(field)

    def create(self) -> None:
        return None

    def add(self, acc: Any, value: Any) -> Any:
        x = self.get(value)
        return x if acc is None or x < acc else acc

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None or (b is not None and b < a) else a


class Max(AggregateFunction):
    def __init__(self, field: str | Callable[[Any], Any]) -> None:
        self.get = _getter(field)

    def create(self) -> None:
        return None

    def add(self, acc: Any, value: Any) -> Any:
        x = self.get(value)
        return x if acc is None or x > acc else acc

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None or (b is not None and b > a) else a


class Mean(AggregateFunction):
    """Accumulator ``[sum, count]``; result ``sum / count``."""

    def __init__(self, field: str | Callable[[Any], Any]) -> None:
        self.get = _getter(field)

    def create(self) -> list:
        return [0, 0]

    def add(self, acc: list, value: Any) -> list:
        return [acc[0] + self.get(value), acc[1] + 1]

    def merge(self, a: list, b: list) -> list:
        return [a[0] + b[0], a[1] + b[1]]

    def result(self, acc: list) -> float | None:
        return acc[0] / acc[1] if acc[1] else None


BUILTINS: dict[str, type[AggregateFunction]] = {
    "sum": Sum,
    "min": Min,
    "max": Max,
    "mean": Mean,
}


def compile_aggregates(fields: dict[str, Any]) -> dict[str, AggregateFunction]:
    """Turn ``aggregate(**fields)`` into named aggregate functions, validating each."""
    if not fields:
        raise JobDefinitionError('aggregate() needs at least one field, e.g. count="count"')
    out: dict[str, AggregateFunction] = {}
    for name, spec in fields.items():
        if name == "key":
            raise JobDefinitionError('aggregate field name "key" is reserved for the key')
        if isinstance(spec, AggregateFunction):
            out[name] = spec
        elif spec == "count" or spec == ("count",):
            out[name] = Count()
        elif (
            isinstance(spec, tuple)
            and len(spec) == 2
            and spec[0] in BUILTINS
            and (isinstance(spec[1], str) or callable(spec[1]))
        ):
            out[name] = BUILTINS[spec[0]](spec[1])
        else:
            raise JobDefinitionError(
                f'aggregate field {name}={spec!r}: expected "count", (kind, field) with kind'
                f" in {sorted(BUILTINS)} and field a name or function, or an AggregateFunction"
            )
    return out
