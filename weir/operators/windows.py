"""Window specifications: which windows an event-time timestamp belongs to.

Times are epoch milliseconds; the API takes seconds. A window ``[start, end)``
contains timestamps ``start <= ts < end``; its last timestamp is ``end - 1``,
and it fires when the watermark reaches that (Flink's ``maxTimestamp``).
Tumbling and sliding windows are aligned to the epoch, as in Flink.
"""

from __future__ import annotations

from weir.operators.exceptions import JobDefinitionError


def _ms(seconds: float, what: str) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        raise JobDefinitionError(f"{what}={seconds!r}: expected a positive number of seconds")
    ms = round(seconds * 1000)
    if ms < 1:
        raise JobDefinitionError(f"{what}={seconds!r}: windows are at least 1 ms")
    return ms


class WindowSpec:
    """Base of window kinds."""

    merging = False

    def assign(self, ts: int) -> list[tuple[int, int]]:
        raise NotImplementedError


class Tumbling(WindowSpec):
    """Fixed, non-overlapping windows of ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.size = _ms(seconds, "Tumbling(seconds)")

    def assign(self, ts: int) -> list[tuple[int, int]]:
        start = ts - ts % self.size
        return [(start, start + self.size)]

    def __repr__(self) -> str:
        return f"Tumbling(seconds={self.size / 1000:g})"


class Sliding(WindowSpec):
    """Windows of ``seconds`` starting every ``every`` seconds (overlapping).

    When ``seconds`` is a multiple of ``every``, every timestamp of one slide belongs to
    the same windows, and records mostly arrive slide by slide: the last slide's
    windows are kept (one tuple, swapped whole, so slots sharing the spec never see a
    torn pair) and returned as they are — callers only read them."""

    def __init__(self, seconds: float, every: float) -> None:
        self.size = _ms(seconds, "Sliding(seconds)")
        self.slide = _ms(every, "Sliding(every)")
        if self.slide > self.size:
            raise JobDefinitionError(
                f"Sliding(seconds={seconds}, every={every}): every must not exceed seconds"
            )
        self._last: tuple[int, list[tuple[int, int]]] | None = None

    def assign(self, ts: int) -> list[tuple[int, int]]:
        last_start = ts - ts % self.slide
        last = self._last
        if last is not None and last[0] == last_start:
            return last[1]
        out = []
        start = last_start
        while start > ts - self.size:
            out.append((start, start + self.size))
            start -= self.slide
        out.reverse()
        if self.size % self.slide == 0:
            self._last = (last_start, out)
        return out

    def __repr__(self) -> str:
        return f"Sliding(seconds={self.size / 1000:g}, every={self.slide / 1000:g})"


class Session(WindowSpec):
    """Per-key sessions that close after ``gap`` seconds without records."""

    merging = True

    def __init__(self, gap: float) -> None:
        self.gap = _ms(gap, "Session(gap)")

    def assign(self, ts: int) -> list[tuple[int, int]]:
        return [(ts, ts + self.gap)]

    def __repr__(self) -> str:
        return f"Session(gap={self.gap / 1000:g})"
