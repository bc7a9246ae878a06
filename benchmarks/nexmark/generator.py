"""Nexmark events: persons, auctions and bids, as JSON records on a Kafka topic.

The model follows the Nexmark generator used by Beam's and Flink's Nexmark
benchmarks (``NexmarkGenerator`` with its default ``GeneratorConfig``):

- Event ``n`` is a person, an auction or a bid by its position in a block of
  50: 1 person, 3 auctions, 46 bids (``PERSON/AUCTION/BID_PROPORTION``).
- Person and auction ids count up from 1000 (``FIRST_PERSON_ID``,
  ``FIRST_AUCTION_ID``); the n-th event's "last" person/auction id is derived
  from ``n`` the same way (``lastBase0PersonId``, ``lastBase0AuctionId``).
- Bids go to a *hot* auction (the first of the last batch of 100 auctions)
  with probability 1 - 1/2 (``hotAuctionRatio`` 2), else to a random auction
  among the last 100 in flight plus 10 ahead; bidders are hot with
  probability 1 - 1/4, likewise sellers. Prices are ``round(10^(6u) * 100)``
  cents, categories 10..14, and each record is padded with ``extra`` text to
  Nexmark's average sizes (person 200, auction 500, bid 100 bytes).
- Event time advances by a fixed inter-event delay: ``1000 / event_rate`` ms.

What differs, on purpose: one ``random.Random(seed)`` drives everything, so
the same seed and count give byte-identical events; the records are flat JSON
objects with a ``type`` ("person" | "auction" | "bid"), ``seq`` (the event
number) and ``ts`` (event time, epoch ms, also the Kafka timestamp); and the
default event-time rate is 1,000 events/s instead of Nexmark's 10,000, so that
a run of 200k events spans 200 s of event time and 10 s windows close all
through the run rather than twice. Records are keyed for Kafka the way the
queries use them: bids by auction id, auctions by their id, persons by theirs.

Two ways to write them (``python -m benchmarks.nexmark.generator --help``):

- pre-fill: as fast as one producer goes, event times from ``--base-time-ms``;
- fixed rate (``--rate R``): event ``n`` is sent at start + n / R seconds and its
  event time *is* that scheduled wall-clock time, so an output's latency is
  ``now - ts`` (measured from when the event was due, not when a late producer
  got round to it).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Producer

from benchmarks.common import PREFILL_CONFIG, prefill, send

PERSON_PROPORTION = 1
AUCTION_PROPORTION = 3
BID_PROPORTION = 46
PROPORTION_DENOMINATOR = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION

FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5

# Batches of "hot" ids (HOT_*_RATIO in the Java generator's model classes).
HOT_AUCTION_BATCH = 100
HOT_BIDDER_BATCH = 100
HOT_SELLER_BATCH = 100
AUCTION_ID_LEAD = 10
PERSON_ID_LEAD = 10

US_STATES = ["AZ", "CA", "ID", "OR", "WA", "WY"]
US_CITIES = [
    "Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland",
    "Bend", "Redmond", "Seattle", "Kent", "Cheyenne",
]  # fmt: skip
FIRST_NAMES = ["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah",
               "Deiter", "Walter"]  # fmt: skip
LAST_NAMES = ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones",
              "Noris"]  # fmt: skip
HOT_CHANNELS = ["Google", "Facebook", "Baidu", "Apple"]
HOT_URLS = [f"https://www.nexmark.com/{c.lower()}/item.htm?query=1" for c in HOT_CHANNELS]

DEFAULT_BASE_TIME_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DEFAULT_SEED = 42
DEFAULT_EVENT_RATE = 1000.0  # events per second of event time


@dataclass(frozen=True)
class GeneratorConfig:
    seed: int = DEFAULT_SEED
    base_time_ms: int = DEFAULT_BASE_TIME_MS
    event_rate: float = DEFAULT_EVENT_RATE
    hot_auction_ratio: int = 2
    hot_bidders_ratio: int = 4
    hot_sellers_ratio: int = 4
    in_flight_auctions: int = 100
    active_people: int = 1000
    avg_person_bytes: int = 200
    avg_auction_bytes: int = 500
    avg_bid_bytes: int = 100


def last_base0_person_id(event_id: int) -> int:
    epoch, offset = divmod(event_id, PROPORTION_DENOMINATOR)
    if offset >= PERSON_PROPORTION:
        offset = PERSON_PROPORTION - 1
    return epoch * PERSON_PROPORTION + offset


def last_base0_auction_id(event_id: int) -> int:
    epoch, offset = divmod(event_id, PROPORTION_DENOMINATOR)
    if offset < PERSON_PROPORTION:
        epoch -= 1
        offset = AUCTION_PROPORTION - 1
    elif offset >= PERSON_PROPORTION + AUCTION_PROPORTION:
        offset = AUCTION_PROPORTION - 1
    else:
        offset -= PERSON_PROPORTION
    return epoch * AUCTION_PROPORTION + offset


def event_kind(event_id: int) -> str:
    offset = event_id % PROPORTION_DENOMINATOR
    if offset < PERSON_PROPORTION:
        return "person"
    if offset < PERSON_PROPORTION + AUCTION_PROPORTION:
        return "auction"
    return "bid"


class Generator:
    """Deterministic Nexmark events: ``next_event(n, ts)`` must be called for n = 0, 1, 2, …"""

    def __init__(self, config: GeneratorConfig) -> None:
        self.cfg = config
        self.rng = random.Random(config.seed)
        # Random text comes from slices of one random pool: as random as
        # per-character draws for these purposes, and much cheaper in Python.
        self._pool = "".join(self.rng.choices("abcdefghijklmnopqrstuvwxyz ", k=1 << 16))
        self._delay_ms = 1000.0 / config.event_rate
        # Events until `in_flight_auctions` more auctions exist: the auction horizon.
        self._auction_horizon_ms = (
            config.in_flight_auctions * PROPORTION_DENOMINATOR / AUCTION_PROPORTION
        ) * self._delay_ms

    # -- random helpers ------------------------------------------------------
    def _string(self, n: int) -> str:
        start = self.rng.randrange(len(self._pool) - n)
        return self._pool[start : start + n]

    def _extra(self, current: int, desired: int) -> str:
        if current > desired:
            return ""
        desired -= current
        delta = round(desired * 0.2)
        return self._string(desired - delta + self.rng.randrange(2 * delta + 1))

    def _price(self) -> int:
        return round(10.0 ** (self.rng.random() * 6.0) * 100.0)

    def _next_person_id(self, event_id: int) -> int:
        people = last_base0_person_id(event_id) + 1
        active = min(people, self.cfg.active_people)
        return people - active + self.rng.randrange(active + PERSON_ID_LEAD)

    def _next_auction_id(self, event_id: int) -> int:
        last = last_base0_auction_id(event_id)
        low = max(last - self.cfg.in_flight_auctions, 0)
        return low + self.rng.randrange(last - low + 1 + AUCTION_ID_LEAD)

    # -- events --------------------------------------------------------------
    def next_event(self, n: int, ts: int) -> tuple[bytes, dict[str, Any]]:
        """Event number ``n`` with event time ``ts``: (Kafka key, record)."""
        kind = event_kind(n)
        if kind == "bid":
            return self._bid(n, ts)
        if kind == "auction":
            return self._auction(n, ts)
        return self._person(n, ts)

    def _person(self, n: int, ts: int) -> tuple[bytes, dict[str, Any]]:
        rng = self.rng
        pid = last_base0_person_id(n) + FIRST_PERSON_ID
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        email = f"{self._string(7)}@{self._string(5)}.com"
        card = " ".join(f"{rng.randrange(10000):04d}" for _ in range(4))
        city, state = rng.choice(US_CITIES), rng.choice(US_STATES)
        size = 8 + len(name) + len(email) + len(card) + len(city) + len(state)
        record = {
            "type": "person", "seq": n, "ts": ts, "id": pid, "name": name,
            "email": email, "credit_card": card, "city": city, "state": state,
            "extra": self._extra(size, self.cfg.avg_person_bytes),
        }  # fmt: skip
        return str(pid).encode(), record

    def _auction(self, n: int, ts: int) -> tuple[bytes, dict[str, Any]]:
        rng, cfg = self.rng, self.cfg
        aid = last_base0_auction_id(n) + FIRST_AUCTION_ID
        if rng.randrange(cfg.hot_sellers_ratio) > 0:
            seller = (last_base0_person_id(n) // HOT_SELLER_BATCH) * HOT_SELLER_BATCH
        else:
            seller = self._next_person_id(n)
        category = FIRST_CATEGORY_ID + rng.randrange(NUM_CATEGORIES)
        initial = self._price()
        expires = ts + 1 + rng.randrange(max(int(self._auction_horizon_ms * 2), 1))
        item, desc = self._string(20), self._string(100)
        reserve = initial + self._price()
        record = {
            "type": "auction", "seq": n, "ts": ts, "id": aid, "item_name": item,
            "description": desc, "initial_bid": initial, "reserve": reserve,
            "expires": expires, "seller": seller + FIRST_PERSON_ID, "category": category,
            "extra": self._extra(8 + len(item) + len(desc) + 40, cfg.avg_auction_bytes),
        }  # fmt: skip
        return str(aid).encode(), record

    def _bid(self, n: int, ts: int) -> tuple[bytes, dict[str, Any]]:
        rng, cfg = self.rng, self.cfg
        if rng.randrange(cfg.hot_auction_ratio) > 0:
            auction = (last_base0_auction_id(n) // HOT_AUCTION_BATCH) * HOT_AUCTION_BATCH
        else:
            auction = self._next_auction_id(n)
        auction += FIRST_AUCTION_ID
        if rng.randrange(cfg.hot_bidders_ratio) > 0:
            bidder = (last_base0_person_id(n) // HOT_BIDDER_BATCH) * HOT_BIDDER_BATCH + 1
        else:
            bidder = self._next_person_id(n)
        bidder += FIRST_PERSON_ID
        price = self._price()
        if rng.randrange(2) > 0:
            i = rng.randrange(len(HOT_CHANNELS))
            channel, url = HOT_CHANNELS[i], HOT_URLS[i]
        else:
            c = rng.randrange(10000)
            channel, url = f"channel-{c}", f"https://www.nexmark.com/{self._string(5)}/item.htm"
        record = {
            "type": "bid", "seq": n, "ts": ts, "auction": auction, "bidder": bidder,
            "price": price, "channel": channel, "url": url,
            "extra": self._extra(32, cfg.avg_bid_bytes),
        }  # fmt: skip
        return str(auction).encode(), record

    def event_time(self, n: int) -> int:
        return self.cfg.base_time_ms + int(n * self._delay_ms)


def _compact(value: bytes) -> bytes:
    # orjson's bytes keep a ~4 KB allocation each; hold a right-sized copy instead.
    return memoryview(value).tobytes()


def generate(n: int, config: GeneratorConfig | None = None) -> list[tuple[bytes, bytes, int]]:
    """``n`` events as (key, JSON value, event time ms); identical for the same config."""
    gen = Generator(config or GeneratorConfig())
    dumps = orjson.dumps
    out = []
    for i in range(n):
        ts = gen.event_time(i)
        key, record = gen.next_event(i, ts)
        out.append((key, _compact(dumps(record)), ts))
    return out


def stream_at_rate(
    n: int, rate: float, config: GeneratorConfig | None = None, start: float | None = None
) -> Iterator[tuple[float, bytes, bytes, int]]:
    """``n`` events due at ``start + i / rate`` (wall clock), event time = due time.

    Yields (due time in s, key, value, ts ms); the caller sends each when it is due.
    """
    cfg = config or GeneratorConfig()
    gen = Generator(cfg)
    start = time.time() if start is None else start
    dumps = orjson.dumps
    for i in range(n):
        due = start + i / rate
        ts = int(due * 1000)
        key, record = gen.next_event(i, ts)
        yield due, key, dumps(record), ts


# -- Kafka ---------------------------------------------------------------------------
# Producer settings for Nexmark input, over common.PREFILL_CONFIG (which keeps Java's
# partitioner: a key lands on the same partition for every system): idempotent with
# acks=all, so each partition keeps the event order and event time never goes back.
ORDERED: dict[str, Any] = {
    "linger.ms": 20,
    "acks": "all",
    "enable.idempotence": True,
    "log_level": 3,
}


def produce_at_rate(
    bootstrap: str, topic: str, n: int, rate: float, config: GeneratorConfig | None = None
) -> dict[str, float]:
    """Send ``n`` events at ``rate``/s; returns how far behind schedule the sender fell."""
    producer = Producer(
        {**PREFILL_CONFIG, **ORDERED, "bootstrap.servers": bootstrap, "linger.ms": 1}
    )
    worst = 0.0
    started = time.time()
    for due, key, value, ts in stream_at_rate(n, rate, config, start=started + 0.2):
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        else:
            worst = max(worst, -delay)
        send(producer, topic, value, key, timestamp=ts)
        producer.poll(0)
    producer.flush(60)
    return {"seconds": time.time() - started, "max_behind_s": worst}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = as fast as possible")
    p.add_argument("--event-rate", type=float, default=DEFAULT_EVENT_RATE,
                   help="events per second of event time (pre-fill mode)")  # fmt: skip
    p.add_argument("--base-time-ms", type=int, default=DEFAULT_BASE_TIME_MS)
    p.add_argument("--partitions", type=int, default=0, help="create the topic first")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    cfg = GeneratorConfig(
        seed=args.seed, base_time_ms=args.base_time_ms, event_rate=args.event_rate
    )
    if args.partitions:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": args.bootstrap})
        for f in admin.create_topics([NewTopic(args.topic, args.partitions, 1)]).values():
            f.result(30)
    if args.rate > 0:
        info = produce_at_rate(args.bootstrap, args.topic, args.events, args.rate, cfg)
        print(orjson.dumps(info).decode(), flush=True)
    else:
        seconds = prefill(args.bootstrap, args.topic, generate(args.events, cfg), config=ORDERED)
        print(f"{args.events} events in {seconds:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
