"""The queries' parameters, shared by every system's implementation (no dependencies).

Every implementation reads the same input topic (all Nexmark events, JSON,
bids keyed by auction id) and writes one output topic in the shapes below, so
one checker (`benchmarks.nexmark.reference`) judges them all.

- q0     pass-through: every event, unchanged.
- q1     currency conversion: every bid with ``price * DOLLAR_TO_EURO``.
- q2     selection: ``{"auction", "price", "seq"}`` of bids whose ``auction % 123 == 0``.
- q5     hot items: bids counted per auction in sliding windows of 10 s every 2 s,
         then per window the auction with the most bids (a running max per
         window): ``{"window_start", "window_end", "auction", "count"}``.
- q7     highest bid: the highest bid per auction in 10 s tumbling windows, then
         per window the highest of those (a running max per window):
         ``{"window_start", "window_end", "auction", "bidder", "price"}``.
- count  running count of bids per auction, emitted on every bid:
         ``{"key": "<auction>", "count", "ts"}`` (``ts``: the latest bid's event time).
- q3     local item suggestion, an incremental join: every auction in category 10
         with its seller, a person in OR, ID or CA, whichever of the two came first:
         ``{"name", "city", "state", "id"}`` (``id``: the auction's), once per auction.
- q8     monitor new users, a window join: every person who opened an auction in
         the same 10 s tumbling window as they registered, once per window:
         ``{"id", "name", "window_start"}``.

Windows are event-time windows aligned to the epoch, ``[start, end)`` in ms,
closed by a watermark ``OUT_OF_ORDERNESS_S`` behind the largest event time
seen (Weir's max_out_of_orderness, Quix's grace, Bytewax's wait_for_system_duration).
"""

QUERIES = ("q0", "q1", "q2", "q5", "q7", "count", "q3", "q8")
JOIN_QUERIES = ("q3", "q8")

DOLLAR_TO_EURO = 0.908
Q2_MODULUS = 123
Q5_SIZE_MS = 10_000
Q5_SLIDE_MS = 2_000
Q7_SIZE_MS = 10_000
Q3_CATEGORY = 10
Q3_STATES = ("OR", "ID", "CA")
# q3 joins whenever both sides are there: an interval join whose bound spans any run.
Q3_WITHIN_S = 24 * 3600.0
Q8_SIZE_MS = 10_000
OUT_OF_ORDERNESS_S = 1.0


def is_bid(r: dict) -> bool:
    return r["type"] == "bid"


def q1_map(r: dict) -> dict:
    return {**r, "price": r["price"] * DOLLAR_TO_EURO}


def q2_filter(r: dict) -> bool:
    return r["type"] == "bid" and r["auction"] % Q2_MODULUS == 0


def q2_project(r: dict) -> dict:
    return {"auction": r["auction"], "price": r["price"], "seq": r["seq"]}


def more_bids(a: dict, b: dict) -> dict:
    """Running max of per-auction window counts (the first max wins ties)."""
    return b if b["count"] > a["count"] else a


def higher_bid(a: dict, b: dict) -> dict:
    """The higher of two bids (the first wins ties)."""
    return b if b["price"] > a["price"] else a


def q3_auction(r: dict) -> bool:
    return r["type"] == "auction" and r["category"] == Q3_CATEGORY


def q3_person(r: dict) -> bool:
    return r["type"] == "person" and r["state"] in Q3_STATES


def q3_row(auction: dict, person: dict) -> dict:
    return {"name": person["name"], "city": person["city"], "state": person["state"],
            "id": auction["id"]}  # fmt: skip


def is_person(r: dict) -> bool:
    return r["type"] == "person"


def is_auction(r: dict) -> bool:
    return r["type"] == "auction"


def q8_rows(window: tuple[int, int], persons: list[dict]) -> list[dict]:
    """The rows of one seller's window that has both registrations and auctions."""
    return [{"id": p["id"], "name": p["name"], "window_start": window[0]} for p in persons]
