"""In-memory stand-ins for the broker-facing parts of a worker, for protocol unit tests.

Every fake records what was asked of it, in order, so a test can check a protocol's
steps against its docstring: ``events`` lists are shared between the fakes of one
test, so their interleaving is visible.
"""

from __future__ import annotations

from typing import Any

import orjson

from weir import Job
from weir.operators.build import build_chain
from weir.operators.chain import Barrier, Batch
from weir.operators.physical import compile_plan
from weir.operators.plan import ErrorPolicy
from weir.operators.timers import NO_TIME
from weir.service.metrics import Metrics
from weir.service.slots import FETCHER, SOURCES, Inbox, Release, Slot, Stop

# -- Kafka records and the producer ------------------------------------------------------


class Msg:
    """A consumed Kafka message, as the fetcher hands it to a slot's source."""

    def __init__(self, topic: str, partition: int, offset: int, value: Any) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._value = orjson.dumps(value)

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return None

    def value(self) -> bytes:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_000 + self._offset)

    def error(self) -> None:
        return None


class Produced:
    """One record a slot handed to the producer."""

    __slots__ = ("headers", "key", "partition", "topic", "value")

    def __init__(self, topic: str, value: bytes | None, key: bytes | None, headers: Any, partition):
        self.topic, self.value, self.key = topic, value, key
        self.headers, self.partition = headers, partition

    @property
    def record(self) -> Any:
        """The decoded value (sink and dead-letter values are JSON here)."""
        return orjson.loads(self.value)

    def header(self, name: str) -> str:
        return dict(self.headers or [])[name].decode()


class FakeProducer:
    """The worker's producer: records every ``produce`` call; never full."""

    def __init__(self) -> None:
        self.records: list[Produced] = []

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        on_delivery: Any = None,
        callback: Any = None,
        timestamp: int = 0,
        headers: Any = None,
    ) -> None:
        self.records.append(
            Produced(topic, value, key, headers, None if partition < 0 else partition)
        )

    def poll(self, timeout: float = 0.0) -> int:
        return 0

    def to(self, topic: str) -> list[Produced]:
        return [r for r in self.records if r.topic == topic]


# -- slots driven step by step in the test's thread ------------------------------------


class SteppedInbox(Inbox):
    """An inbox that ends its slot's loop (a `Stop` in place of the next item) when it
    is empty or ``budget`` items were taken: `Slot.process_inbox` then runs in the test's own
    thread, a few items at a time, in any interleaving a test chooses."""

    def __init__(self) -> None:
        super().__init__()
        self.budget = 0

    def take_all(self) -> list[tuple[int, int, Any]]:
        """Empty the inbox without running the slot: ``(target, channel, payload)``."""
        return [self.get_nowait() for _ in range(len(self))]

    def get_nowait(self) -> tuple[int, int, Any]:
        return super().get()

    def get(self) -> tuple[int, int, Any]:
        if self.budget <= 0 or not len(self):
            return SOURCES, FETCHER, Stop()
        self.budget -= 1
        return super().get()


class FakeEpoch:
    """A slot's epoch buffer: each ``freeze`` ends an epoch with the writes staged so far."""

    def __init__(self) -> None:
        self.staged: list[tuple[str, bytes, bytes | None]] = []

    def freeze(self) -> list[tuple[str, bytes, bytes | None]]:
        writes, self.staged = self.staged, []
        return writes


class FakeChangelogs:
    """Changelog records of writes: topic ``<state>.changelog``, partition 0."""

    def records(self, writes):
        for state, skey, data in writes:
            yield f"{state}.changelog", skey, data, 0


class Slots:
    """The slots of one worker process with their real `Slot` code and chains, a fake
    producer, and the acknowledgements they send to the coordinator (``acks``), each
    with the inputs the slot had passed the barrier on when it sent it (``passed``)."""

    def __init__(self, job: Job, n: int, policy: str = "dlq", stateful: bool = False) -> None:
        self.producer = FakeProducer()
        self.acks: list[tuple[int, int, list]] = []
        self.passed: list[set[int]] = []
        self.all: list[Slot] = []
        self.metrics = Metrics(job.name)
        plan = compile_plan(job, job.name)
        for i in range(n):
            slot = Slot(
                i,
                self.all,
                plan.roots,
                plan.max_key_groups,
                self.producer,
                ErrorPolicy(policy),
                f"{job.name}.dlq",
                self.metrics,
                on_ack=self._on_ack,
                on_fatal=self._on_fatal,
                state=FakeEpoch() if stateful else None,
                changelogs=FakeChangelogs() if stateful else None,
            )
            slot.inbox = SteppedInbox()
            self.all.append(slot)
        for slot in self.all:
            slot.chain = build_chain(plan.roots, slot, plan.max_key_groups)

    def _on_ack(self, slot: int, checkpoint_id: int, writes: list) -> None:
        self.acks.append((slot, checkpoint_id, writes))
        self.passed.append(set(self.all[slot].passed))

    def inputs(self, slot: int) -> set[int]:
        """Every input of a slot: its sources and the targets exchanges feed."""
        return {SOURCES, *self.all[slot].chain.inputs}

    def _on_fatal(self, exc: BaseException) -> None:
        raise AssertionError(f"slot failed: {exc!r}") from exc

    def __getitem__(self, i: int) -> Slot:
        return self.all[i]

    # what the fetcher and the coordinator put into inboxes
    def fetch(self, slot: int, topic: str, partition: int, msgs: list[Msg]) -> None:
        self.all[slot].inbox.put(SOURCES, FETCHER, Batch(topic, partition, msgs), len(msgs))

    def barrier(self, checkpoint_id: int) -> None:
        for slot in self.all:
            slot.inbox.put(SOURCES, FETCHER, Barrier(checkpoint_id))

    def release(self, checkpoint_id: int) -> None:
        for slot in self.all:
            slot.inbox.put(SOURCES, FETCHER, Release(checkpoint_id))

    # running
    def run(self, slot: int, items: int = 10**9) -> None:
        """Slot ``slot`` takes up to ``items`` items from its inbox (and whatever they
        replay), then stops."""
        s = self.all[slot]
        s.inbox.budget = items
        s.process_inbox()

    def settle(self) -> None:
        """Run every slot until no inbox holds anything."""
        while any(len(s.inbox) for s in self.all):
            for i in range(len(self.all)):
                self.run(i)


def node_id(job: Job, name: str) -> int:
    """The plan node id of operator ``name`` (an exchange's id is its input target)."""
    return next(op.id for op in job.dataflow.ops() if op.name == name)


# -- the checkpoint coordinator's collaborators ---------------------------------------------


def offsets_of(tps) -> list[tuple[str, int, int]]:
    return sorted((tp.topic, tp.partition, tp.offset) for tp in tps)


class FakeConsumers:
    """`GroupConsumers.by_member`: one member per topic."""

    def by_member(self, tps):
        topics = sorted({tp.topic for tp in tps})
        return [(f"member-{t}", [tp for tp in tps if tp.topic == t]) for t in topics]


class FakeOutput:
    """`TransactionalOutput`: records commits as ``("commit", {member: offsets})``.

    ``result`` is what ``commit`` returns (False: an at-least-once offset commit the
    group refused); ``error`` is raised instead when set.
    """

    def __init__(self, events: list, exactly_once: bool = True) -> None:
        self.events = events
        self.exactly_once = exactly_once
        self.result = True
        self.error: BaseException | None = None
        self.producer = EventProducer(events)
        self.metadata: dict[tuple[str, int], str] = {}  # offset metadata of the last commit

    def commit(self, members, timeout_s: float) -> bool:
        self.events.append(("commit", {m: offsets_of(tps) for m, tps in members}))
        self.metadata = {(tp.topic, tp.partition): tp.metadata for _, tps in members for tp in tps}
        if self.error is not None:
            raise self.error
        return self.result

    def check_deliveries(self) -> None:
        self.events.append(("check-deliveries",))


class EventProducer(FakeProducer):
    """The output's producer: a ``("produce", topic, partition)`` event per record."""

    def __init__(self, events: list) -> None:
        super().__init__()
        self.events = events

    def produce(
        self, topic, value=None, key=None, partition=-1, on_delivery=None, callback=None,
        timestamp=0, headers=None,
    ):  # fmt: skip
        super().produce(topic, value, key, partition, on_delivery, callback, timestamp, headers)
        self.events.append(("produce", topic, None if partition < 0 else partition))


class FakeRouter:
    """`SlotRouter`: the read positions, the partitions owned, latency stamps."""

    def __init__(self, positions: dict, pins: dict) -> None:
        self.positions = positions
        self.pins = pins
        self.first_timestamps: list[int] = []


class RecordingInbox:
    """A slot's inbox as the coordinator sees it: barriers and releases, in order.
    With ``coordinator`` set, the slot acknowledges each barrier at once."""

    def __init__(self, events: list, slot: int) -> None:
        self.events, self.slot = events, slot
        self.coordinator: Any = None
        self.writes: list = []

    def put(self, target: int, channel: int, payload: Any, records: int = 0) -> None:
        assert (target, channel) == (SOURCES, FETCHER), "the coordinator speaks to sources"
        kind = "barrier" if isinstance(payload, Barrier) else "release"
        self.events.append((kind, self.slot, payload.id))
        if kind == "barrier" and self.coordinator is not None:
            self.coordinator.ack(self.slot, payload.id, list(self.writes))


class AppliedEpoch:
    """A slot's epoch buffer as the coordinator sees it: ``applied`` after step 4."""

    def __init__(self, events: list, slot: int) -> None:
        self.events, self.slot = events, slot

    def applied(self) -> None:
        self.events.append(("applied", self.slot))


class FakeSlotHandle:
    def __init__(self, events: list, slot: int, stateful: bool) -> None:
        self.inbox = RecordingInbox(events, slot)
        self.state = AppliedEpoch(events, slot) if stateful else None


class FakeStore:
    """`StateStore`: the last checkpoint id applied, and ``apply`` calls."""

    def __init__(self, events: list, last: int = 0) -> None:
        self.events, self.last = events, last

    def last_checkpoint(self) -> int:
        return self.last

    def apply(self, writes, offsets, checkpoint_id: int) -> None:
        self.events.append(("apply", checkpoint_id, list(writes), dict(offsets)))
        self.last = checkpoint_id


class FakeStateChangelogs:
    """`Changelogs.end_offsets`: one offset per state written."""

    def __init__(self, events: list) -> None:
        self.events = events

    def end_offsets(self, admin, writes, timeout_s: float) -> dict:
        self.events.append(("end-offsets",))
        return {(state, 0): 100 for state, _, _ in writes}


# -- flow control and watermarks -------------------------------------------------------------


class PauseRecorder:
    """A consumer's pause/resume: the calls, and the resulting paused set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, int]]]] = []
        self.paused: set[tuple[str, int]] = set()

    def pause(self, tps) -> None:
        got = sorted((tp.topic, tp.partition) for tp in tps)
        assert not self.paused & set(got), f"pausing paused partitions {got}"
        self.calls.append(("pause", got))
        self.paused |= set(got)

    def resume(self, tps) -> None:
        got = sorted((tp.topic, tp.partition) for tp in tps)
        assert set(got) <= self.paused, f"resuming partitions not paused {got}"
        self.calls.append(("resume", got))
        self.paused -= set(got)


class Load:
    """A slot as flow control reads it: ``queued`` records of one input costing ``cost``
    seconds each (0: not known yet), or of several inputs given as ``backlog``."""

    def __init__(
        self,
        slot: int,
        queued: int = 0,
        cost: float = 0.0,
        queued_bytes: int = 0,
        backlog: list[tuple[int, float]] | None = None,
    ) -> None:
        self.slot, self.queued, self.cost, self.queued_bytes = slot, queued, cost, queued_bytes
        self.inputs = backlog

    @property
    def backlog(self) -> list[tuple[int, float]]:
        if self.inputs is not None:
            return self.inputs
        return [(self.queued, self.cost)] if self.queued else []

    @property
    def record_cost(self) -> float:
        if self.inputs is not None:
            return sum(cost for _, cost in self.inputs)
        return self.cost


class Progress:
    """`PartitionProgress` from dicts a test sets."""

    def __init__(self) -> None:
        self.max_ts: dict[tuple[str, int], int] = {}
        self.seen: dict[tuple[str, int], float] = {}
        self.backlog: set[tuple[str, int]] = set()
        self.floors: dict[tuple[str, int], int] = {}
        self.upstream: dict[tuple[str, int], Any] = {}  # repartition partition -> its table

    def record(self, tp: tuple[str, int], ts: int, now: float) -> None:
        """A record of ``tp`` with event time ``ts`` was processed at ``now``."""
        self.max_ts[tp] = max(ts, self.max_ts.get(tp, ts))
        self.seen[tp] = now

    def max_timestamp(self, tp):
        return self.max_ts.get(tp)

    def last_seen(self, tp):
        return self.seen.get(tp)

    def caught_up(self, tp) -> bool:
        return tp not in self.backlog

    def reached_watermark(self, tp) -> int:
        return self.floors.get(tp, NO_TIME)

    def announced(self, tp):
        return self.upstream.get(tp)
