"""Reference answers for the Nexmark queries, computed in batch, and the output checker.

The reference is plain Python over the very records that were written to the
input topic (decoded from their bytes), independent of every stream
processor's code: a fast wrong answer fails here.

What "correct" means per query (``check``):

- q0/q1/q2: the output holds exactly the expected records (by ``seq``), each
  equal to the reference (prices within 1e-9 relative); none missing, none
  unexpected. Duplicates are allowed only for at-least-once rows, and counted.
- count: for every auction, the emitted counts are exactly 1..n (its number of
  bids), and the one numbered k carries the event time of the auction's k-th
  bid (so counts came in order and each bid counted once).
- q5/q7: every emitted record is a true per-auction window result (q5: that
  auction's bid count in that window; q7: that auction's highest price in it,
  by one of the bidders who bid it), and for every window that the data
  closes — ``end - 1 + out-of-orderness <= last event time - 1 s`` — the
  largest value emitted equals the true maximum over all auctions. Windows
  beyond that (closed only by end-of-input or idleness) are checked for
  correctness of what was emitted, but not required.
- q3: exactly one row per qualifying auction (by ``id``), equal to the reference.
- q8: every emitted row is a true (person, window) of the batch join, each once, and
  every row of a window the data closes with room to spare is there —
  ``end - 1 + out-of-orderness <= last event time - 10 s``: a join's watermark is
  the minimum over both inputs, and registrations are sparse (1 event in 50), so
  the data's last seconds may not close a window on every partition.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from benchmarks.nexmark.spec import (
    OUT_OF_ORDERNESS_S,
    Q5_SIZE_MS,
    Q5_SLIDE_MS,
    Q7_SIZE_MS,
    Q8_SIZE_MS,
    q1_map,
    q2_filter,
    q2_project,
    q3_auction,
    q3_person,
    q3_row,
)

CLOSE_SLACK_MS = 1000  # partitions end within a few ms of each other; 1 s is generous
JOIN_CLOSE_SLACK_MS = 10_000  # q8: the sparser input's last event may lie seconds back
OOO_MS = int(OUT_OF_ORDERNESS_S * 1000)


@dataclass
class Check:
    """The verdict on one run's output."""

    ok: bool
    outputs: int  # records read back
    expected: int  # records (or windows) required
    missing: int = 0
    wrong: int = 0
    duplicates: int = 0
    unexpected: int = 0
    detail: str = ""
    # What the throughput is measured over: outputs of required windows only
    # (windowed queries) and the input events consumed while they appeared.
    measured: list[int] = field(default_factory=list)  # indexes of outputs that count

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "outputs": self.outputs, "expected": self.expected,
            "missing": self.missing, "wrong": self.wrong, "duplicates": self.duplicates,
            "unexpected": self.unexpected, "detail": self.detail,
        }  # fmt: skip


def _sliding_starts(ts: int, size: int, slide: int) -> list[int]:
    last = ts - ts % slide
    return list(range(last, ts - size, -slide))


class Reference:
    """Everything the checker needs, computed once from the input records."""

    def __init__(self, values: Sequence[bytes]) -> None:
        events = [orjson.loads(v) for v in values]
        self.n = len(events)
        self.ts = [e["ts"] for e in events]  # ascending (one producer, in order)
        self.max_ts = max(self.ts)
        self.close_limit = self.max_ts - CLOSE_SLACK_MS  # watermark the data surely reaches
        self.q0 = {e["seq"]: e for e in events}
        bids = [e for e in events if e["type"] == "bid"]
        self.bids = len(bids)
        self.q1 = {b["seq"]: q1_map(b) for b in bids}
        self.q2 = {b["seq"]: q2_project(b) for b in bids if q2_filter(b)}
        self.count_ts: dict[str, list[int]] = defaultdict(list)
        for b in bids:
            self.count_ts[str(b["auction"])].append(b["ts"])
        # q5: bids per (window start, auction); q7: highest price per (window start, auction).
        self.q5: dict[tuple[int, int], int] = defaultdict(int)
        self.q7: dict[tuple[int, int], int] = {}
        self.q7_bidders: dict[tuple[int, int], set[int]] = defaultdict(set)
        for b in bids:
            for start in _sliding_starts(b["ts"], Q5_SIZE_MS, Q5_SLIDE_MS):
                self.q5[start, b["auction"]] += 1
            k = (b["ts"] - b["ts"] % Q7_SIZE_MS, b["auction"])
            if k not in self.q7 or b["price"] > self.q7[k]:
                self.q7[k] = b["price"]
                self.q7_bidders[k] = {b["bidder"]}
            elif b["price"] == self.q7[k]:
                self.q7_bidders[k].add(b["bidder"])
        self.q5_max = _window_max(self.q5)
        self.q7_max = _window_max(self.q7)
        # q3: each auction of the category with its seller, if the seller is local.
        persons = [e for e in events if e["type"] == "person"]
        auctions = [e for e in events if e["type"] == "auction"]
        local = {p["id"]: p for p in persons if q3_person(p)}
        self.q3 = {
            a["id"]: q3_row(a, local[a["seller"]])
            for a in auctions
            if q3_auction(a) and a["seller"] in local
        }
        # q8: (person, window) where the person registered and opened an auction.
        sellers = {(a["seller"], a["ts"] - a["ts"] % Q8_SIZE_MS) for a in auctions}
        self.q8 = {
            (p["id"], p["ts"] - p["ts"] % Q8_SIZE_MS): p["name"]
            for p in persons
            if (p["id"], p["ts"] - p["ts"] % Q8_SIZE_MS) in sellers
        }
        self.q8_required = {
            k
            for k in self.q8
            if k[1] + Q8_SIZE_MS - 1 + OOO_MS <= self.max_ts - JOIN_CLOSE_SLACK_MS
        }

    # -- helpers for the harness ------------------------------------------------
    def required_windows(self, query: str) -> dict[int, int]:
        """Window start -> true maximum, for the windows the data closes."""
        size, table = (Q5_SIZE_MS, self.q5_max) if query == "q5" else (Q7_SIZE_MS, self.q7_max)
        return {s: m for s, m in table.items() if s + size - 1 + OOO_MS <= self.close_limit}

    def events_between(self, lo_ts: int, hi_ts: int) -> int:
        """Input events with ``lo_ts <= ts <= hi_ts``."""
        return bisect.bisect_right(self.ts, hi_ts) - bisect.bisect_left(self.ts, lo_ts)

    def measured_events(self, query: str) -> int:
        """Input events processed by the time the last timed output appears.

        All of them for stateless and running queries. For q5/q7 the last timed
        output is the last window the data closes, which fires once the
        watermark passes its end: the events up to that point.
        """
        if query == "q8":
            last = max((start for _, start in self.q8_required), default=None)
            if last is None:
                return self.n
            return self.events_between(self.ts[0], last + Q8_SIZE_MS - 1 + OOO_MS)
        if query not in ("q5", "q7"):
            return self.n
        size = Q5_SIZE_MS if query == "q5" else Q7_SIZE_MS
        starts = sorted(self.required_windows(query))
        if not starts:
            return self.n
        return self.events_between(self.ts[0], starts[-1] + size - 1 + OOO_MS)

    def expected_outputs(self, query: str) -> int | None:
        """The exact number of outputs of a stateless or running query (None if windowed)."""
        return {
            "q0": self.n, "q1": self.bids, "q2": len(self.q2), "count": self.bids,
            "q3": len(self.q3),
        }.get(query)  # fmt: skip

    # -- the checker ------------------------------------------------------------
    def check(self, query: str, outputs: Sequence[Any], allow_duplicates: bool) -> Check:
        """Judge ``outputs`` (decoded records, in the order read) for ``query``."""
        if query in ("q0", "q1", "q2"):
            ref = {"q0": self.q0, "q1": self.q1, "q2": self.q2}[query]
            return _check_by_seq(ref, outputs, allow_duplicates, query == "q1")
        if query == "count":
            return self._check_count(outputs, allow_duplicates)
        if query in ("q5", "q7"):
            return self._check_windows(query, outputs)
        if query == "q3":
            return _check_by_seq(self.q3, outputs, allow_duplicates, False, field="id")
        if query == "q8":
            return self._check_q8(outputs, allow_duplicates)
        raise ValueError(query)

    def _check_q8(self, outputs: Sequence[Any], allow_duplicates: bool) -> Check:
        seen: set[tuple[int, int]] = set()
        measured: list[int] = []
        wrong = dups = 0
        detail = ""
        for i, r in enumerate(outputs):
            try:
                key = (int(r["id"]), int(r["window_start"]))
                good = self.q8.get(key) == r["name"]
            except (KeyError, TypeError, ValueError):
                good, key = False, (0, 0)
            if not good:
                wrong += 1
                detail = detail or f"bad record {r!r}"
                continue
            if key in seen:
                dups += 1
            seen.add(key)
            if key in self.q8_required:
                measured.append(i)
        missing = len(self.q8_required - seen)
        if missing and not detail:
            first = min(self.q8_required - seen, key=lambda k: k[1])
            detail = f"{missing}/{len(self.q8_required)} rows missing, first {first}"
        if dups and not allow_duplicates:
            detail = detail or f"{dups} duplicates under exactly-once"
        ok = not wrong and not missing and (allow_duplicates or not dups)
        return Check(ok, len(outputs), len(self.q8_required), missing, wrong, dups, 0, detail,
                     measured)  # fmt: skip

    def _check_count(self, outputs: Sequence[Any], allow_duplicates: bool) -> Check:
        seen: dict[str, set[int]] = defaultdict(set)
        wrong = dups = 0
        detail = ""
        for r in outputs:
            try:
                key, n, ts = str(r["key"]), int(r["count"]), int(r["ts"])
                stamps = self.count_ts.get(key)
                good = stamps is not None and 1 <= n <= len(stamps) and stamps[n - 1] == ts
            except (KeyError, TypeError, ValueError):
                good, key, n = False, "?", 0
            if not good:
                wrong += 1
                detail = detail or f"bad record {r!r}"
                continue
            if n in seen[key]:
                dups += 1
            seen[key].add(n)
        missing = sum(len(stamps) - len(seen.get(k, ())) for k, stamps in self.count_ts.items())
        ok = not wrong and not missing and (allow_duplicates or not dups)
        if missing and not detail:
            detail = f"{missing} counts never emitted"
        if dups and not allow_duplicates:
            detail = detail or f"{dups} duplicate counts under exactly-once"
        return Check(ok, len(outputs), self.bids, missing, wrong, dups, 0, detail,
                     list(range(len(outputs))))  # fmt: skip

    def _check_windows(self, query: str, outputs: Sequence[Any]) -> Check:
        size = Q5_SIZE_MS if query == "q5" else Q7_SIZE_MS
        field_ = "count" if query == "q5" else "price"
        truth = self.q5 if query == "q5" else self.q7
        required = self.required_windows(query)
        best: dict[int, int] = {}
        measured: list[int] = []
        wrong = 0
        detail = ""
        for i, r in enumerate(outputs):
            try:
                start, end, auction = (
                    int(r["window_start"]),
                    int(r["window_end"]),
                    int(r["auction"]),
                )
                value = r[field_]
                good = end - start == size and truth.get((start, auction)) == value
                if good and query == "q7":
                    good = int(r["bidder"]) in self.q7_bidders[start, auction]
            except (KeyError, TypeError, ValueError):
                good, start, value = False, 0, 0
            if not good:
                wrong += 1
                detail = detail or f"bad record {r!r}"
                continue
            if value > best.get(start, -1):
                best[start] = value
            if start in required:
                measured.append(i)
        missing = sum(1 for s, m in required.items() if best.get(s) != m)
        if missing and not detail:
            s = next(s for s, m in sorted(required.items()) if best.get(s) != m)
            detail = (f"{missing}/{len(required)} windows without their true maximum,"
                      f" first [{s}, {s + size}): {best.get(s)} != {required[s]}")  # fmt: skip
        return Check(not wrong and not missing, len(outputs), len(required), missing, wrong,
                     0, 0, detail, measured)  # fmt: skip


class WindowProgress:
    """Which windows the data closes still lack their true maximum in an output read as it
    grows: how the harness knows a windowed query is done (its outputs are running maxima,
    so their number is not known in advance, and a later stage may still be working when
    the input is all consumed). Only the window and the value are looked at; `check`
    judges the records themselves afterwards."""

    def __init__(self, ref: Reference, query: str) -> None:
        self.field = "count" if query == "q5" else "price"
        self.left = dict(ref.required_windows(query))  # window start -> true maximum

    def note(self, record: Any) -> None:
        try:
            start, value = int(record["window_start"]), record[self.field]
        except (KeyError, TypeError, ValueError):
            return
        if self.left.get(start) == value:
            del self.left[start]

    @property
    def done(self) -> bool:
        return not self.left


class JoinProgress:
    """Which rows a join query must emit are still missing from its output read as it
    grows: q3 every qualifying auction's row, q8 every row of the windows the data
    closes (`WindowProgress` for joins: their rows come from a later stage, reading the
    join's own topic, still at work when the input is all consumed)."""

    def __init__(self, ref: Reference, query: str) -> None:
        self.query = query
        self.left: set[Any] = set(ref.q3) if query == "q3" else set(ref.q8_required)

    def note(self, record: Any) -> None:
        try:
            if self.query == "q3":
                self.left.discard(record["id"])
            else:
                self.left.discard((int(record["id"]), int(record["window_start"])))
        except (KeyError, TypeError, ValueError):
            return

    @property
    def done(self) -> bool:
        return not self.left


def _window_max(table: dict[tuple[int, int], int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for (start, _), value in table.items():
        if value > out.get(start, -1):
            out[start] = value
    return out


def _check_by_seq(
    ref: dict[int, dict],
    outputs: Sequence[Any],
    allow_duplicates: bool,
    approx_price: bool,
    field: str = "seq",
) -> Check:
    """Outputs against ``ref``, matched by their ``field`` (the event number, or the
    auction id for q3)."""
    seen: set[int] = set()
    wrong = dups = unexpected = 0
    detail = ""
    for r in outputs:
        seq = r.get(field) if isinstance(r, dict) else None
        want = ref.get(seq)
        if want is None:
            unexpected += 1
            detail = detail or f"unexpected record {r!r}"[:300]
            continue
        if seq in seen:
            dups += 1
            continue
        seen.add(seq)
        if approx_price:
            same = r.keys() == want.keys() and all(
                abs(r[k] - want[k]) <= 1e-9 * max(1.0, abs(want[k]))
                if k == "price"
                else r[k] == want[k]
                for k in want
            )
        else:
            same = r == want
        if not same:
            wrong += 1
            detail = detail or f"record {seq}: {r!r} != {want!r}"[:300]
    missing = len(ref) - len(seen)
    if missing and not detail:
        detail = f"{missing} of {len(ref)} records missing"
    if dups and not allow_duplicates:
        detail = detail or f"{dups} duplicates under exactly-once"
    ok = not wrong and not missing and not unexpected and (allow_duplicates or not dups)
    return Check(ok, len(outputs), len(ref), missing, wrong, dups, unexpected, detail,
                 list(range(len(outputs))))  # fmt: skip
