"""Testing a job without a broker: `JobTester` runs a job's dataflow in this process.

::

    from weir.testing import JobTester

    def test_one_window():
        tester = JobTester(job)
        tester.send("sensors", {"tag": "a", "value": 3.0, "ts": 1_000}, key="a")
        tester.advance_watermark(10_000)
        assert tester.output("sensor-stats") == [{"key": "a", "window_start": 0, ...}]

It runs the worker's own code, not a model of it: the job is compiled for its group
(`weir.operators.physical.compile_plan`); each slot is the worker's `Slot` with the operator
chain `weir.operators.build.build_chain` makes; records reach the slots through the worker's
`SlotRouter`; the watermark follows the worker's rules (`WatermarkTracker`); keyed state
lives in a RocksDB store under the JSON serde, as in a worker; dead letters carry the
worker's headers. The tester stands where Kafka, the fetch loop and the checkpoint
coordinator stand, and after every call (`send`, `advance_time`, `advance_watermark`):

1. Hands the new records, shaped as a consumer returns Kafka records, to the slots owning
   their partitions (or key groups), which run them through the chain.
2. Moves time on: the watermark by the worker's rules from what each partition has
   shown (per-partition event time minus ``max_out_of_orderness``, the minimum over the
   partitions, idle partitions left out after ``idle_timeout`` of processing time), and
   never below what `advance_watermark` asked for; the processing time is the tester's
   clock. Windows and timers that are due fire.
3. Completes a checkpoint: barriers through every slot, the epoch's state changes
   into the store (encoded when written: a value the JSON serde cannot store fails its
   record, as in a worker), held outputs released.
4. Reads back what was written to repartition topics (a worker's consumer sees it once
   the checkpoint has committed) and repeats 1-4 until nothing is left.

Each call is its own fetch batch, so the watermark can move between any two records a
test sends: one of the schedules a worker may run, the strictest one.

What it does not model: Kafka itself (transactions, commit failures, fencing, other
producers' read_committed visibility, topic limits such as ``max.message.bytes``, so
state is never refused for its size); rebalances and partition moves, restores from
changelogs, restarts and the restart strategy (an exception raised in a slot —
``on_error="fail"`` — comes out of the call, and the tester is not usable after it);
standby replicas; several workers or ``--processes``; backpressure and flow control;
metrics and HTTP endpoints. A source's ``max_future`` is checked against the real wall
clock, not the tester's.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import TIMESTAMP_CREATE_TIME

from weir.operators import Job
from weir.operators.build import build_chain
from weir.operators.chain import Barrier
from weir.operators.formats import Serde, SerdeContext, decoder, encode_key, encoder
from weir.operators.physical import KeyedState, PhysicalPlan, compile_plan
from weir.operators.plan import RepartitionSource, Sink, Source, Window
from weir.operators.timers import NO_TIME
from weir.service.changelog import Changelogs
from weir.service.exceptions import WorkerFailed
from weir.service.jobfile import load_job
from weir.service.metrics import Metrics
from weir.service.partitioner import partition_for
from weir.service.queries import present_state
from weir.service.repartition_watermarks import Announced, UpstreamTables, WatermarkChannels
from weir.service.router import SlotRouter
from weir.service.slot_pool import SlotPool
from weir.service.slots import FETCHER, SOURCES, Inbox, Release, Slot, Stop, Watermark
from weir.service.watermarks import WatermarkTracker
from weir.state.epoch import EpochBuffer
from weir.state.layout import key_of, state_key
from weir.state.serde import JsonSerde
from weir.state.store import StateStore, Write

__all__ = ["DeadLetter", "JobTester", "OutputRecord", "WorkerFailed"]

TopicPartition = tuple[str, int]


@dataclass(frozen=True)
class OutputRecord:
    """A record the job wrote: its key as text (bytes if not UTF-8), its value decoded
    in the sink's format, and its timestamp (epoch ms; 0 when the producer stamps it)."""

    key: str | bytes | None
    value: Any
    timestamp: int


@dataclass(frozen=True)
class DeadLetter:
    """A record sent to the dead-letter topic ``<group>.dlq``, with what its headers say."""

    key: bytes | None
    value: bytes | None  # the record as it was (undecodable bytes, or the value as JSON)
    error: str  # "ExceptionType: message"
    reason: str  # decode, timestamp, future, function, key, serialize, timer, ...
    operator: str  # the operator it failed in
    topic: str  # where the record came from
    partition: int
    offset: int


class JobTester:
    """Runs ``job`` in this process, with no broker (steps and limits in the module doc).

    ``partitions``: how many partitions the source topics have, one number for all or
    ``{topic: n}`` (default 1); records without an explicit partition go where Weir's
    producer would put their key (murmur2), keyless ones to partition 0. A partition
    that never gets a record holds the watermark back until its source's
    ``idle_timeout`` passes on the tester's clock, as in a worker. ``slots``: slot
    threads of the simulated worker (run one after another in the caller's thread).
    ``start_time``: the processing time to start from (epoch ms; default: now).
    ``group``: the consumer group (default the job's name), which names the dead-letter
    and internal topics.
    """

    def __init__(
        self,
        job: Job,
        *,
        partitions: int | dict[str, int] = 1,
        slots: int = 1,
        start_time: int | None = None,
        group: str | None = None,
    ) -> None:
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots={slots!r}: expected an int >= 1")
        self.job = job
        self.plan = plan = compile_plan(job, group or job.name)
        self._partitions = _partition_counts(plan, partitions)
        self._now = int(time.time() * 1000) if start_time is None else int(start_time)
        self._forced = NO_TIME  # the watermark advance_watermark asked for
        self._offsets: dict[TopicPartition, int] = {}
        self._seen: dict[TopicPartition, float] = {}  # tester clock (s) of each last record
        self._acks: dict[int, list[Write]] = {}
        self._checkpoint_id = 0
        self._formats = _formats(plan)
        self._source_formats = {
            s.topic: s.value for s in reversed(plan.sources) if isinstance(s, Source)
        }
        self._repartitions = set(plan.repartition_topics)
        self._read = dict.fromkeys(self._repartitions, 0)  # repartition records delivered
        self._producer = _Producer({*plan.sink_topics, *self._repartitions, plan.dlq_topic})
        self._metrics = Metrics(job.name)

        # The store and the slots, as a worker's slot pool makes them.
        changelogs = Changelogs(plan)
        self._dir: Path | None = None
        self._store: StateStore | None = None
        if changelogs:
            self._dir = Path(tempfile.mkdtemp(prefix="weir-tester-"))
            self._store = StateStore(self._dir / "state", changelogs.states)
        serdes = {s: JsonSerde() for s in changelogs.states}
        self._slots: list[Slot] = []
        shared: dict[str, Any] = {}  # as a slot pool's: what operators combine over slots
        for i in range(slots):
            slot = Slot(
                i,
                self._slots,
                plan.roots,
                plan.max_key_groups,
                self._producer,
                plan.on_error,
                plan.dlq_topic,
                self._metrics,
                on_ack=self._on_ack,
                on_fatal=_raise,
                state=None if self._store is None else EpochBuffer(self._store, serdes),
                changelogs=changelogs,
                clock=lambda: self._now,
                shared=shared,
                partition_counts=self._partitions,
            )
            slot.inbox = _DrainingInbox()
            self._slots.append(slot)
        for slot in self._slots:
            slot.chain = build_chain(plan.roots, slot, plan.max_key_groups)
        self._finalizer = weakref.finalize(self, _close, self._store, self._dir)

        # Every partition is assigned to this one worker, for good.
        self._channels = WatermarkChannels(
            plan.watermark_channels, self._partitions, self._announcements
        )
        self._router = SlotRouter(
            slots, plan.max_key_groups, plan.exchanges, control_topics=self._channels.topics
        )
        assigned = [(t, p) for t, n in self._partitions.items() for p in range(n)]
        self._router.reassign(assigned)
        self._pool = SlotPool(plan, slots, self._metrics, changelogs, _raise)
        self._pool.slots = self._slots
        self._pool.assign_ownership(self._router, ())
        self._tracker = WatermarkTracker.for_plan(plan)
        self._started = self._now / 1000  # when the partitions were assigned (s)
        for tp in assigned:
            self._tracker.activate(tp, self._started)
        self._progress = _Progress(self._slots, self._seen, self._channels)
        self._step()

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> JobTester:
        """Load a job file as ``weir run`` does (its folder importable) and test its ``job``."""
        return cls(load_job(str(path)), **options)

    def close(self) -> None:
        """Drop the tester's state store (also done when the tester is garbage collected)."""
        self._finalizer()

    def __enter__(self) -> JobTester:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- input and time ------------------------------------------------------
    def send(
        self,
        topic: str,
        value: Any,
        *,
        key: Any = None,
        timestamp: int | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Feed one record to a source topic and process it (steps in the module doc).

        ``value`` is encoded in the source's format (JSON: any JSON value; bytes: bytes
        or str); bytes are passed as they are, so a test can send what fails to decode.
        ``key`` is encoded as Weir encodes keys (bytes as is, str as UTF-8, else JSON).
        ``timestamp`` is the Kafka record timestamp (epoch ms; default: the tester's
        processing time), the event time unless the source has a ``timestamp=``.
        """
        fmt = self._source_formats.get(topic)
        if fmt is None:
            raise ValueError(
                f"job {self.job.name!r} reads {sorted(self._source_formats)}; not {topic!r}"
            )
        key_bytes = encode_key(key)
        count = self._partitions[topic]
        if partition is None:
            partition = 0 if key_bytes is None else partition_for(key_bytes, count)
        elif isinstance(partition, bool) or not isinstance(partition, int):
            raise ValueError(f"partition={partition!r}: expected an int")
        elif not 0 <= partition < count:
            raise ValueError(
                f"partition={partition}: topic {topic!r} has partitions 0..{count - 1}"
                " (set JobTester(partitions=...) for more)"
            )
        stamp = self._now if timestamp is None else timestamp
        self._deliver([(topic, partition, key_bytes, _encode(value, fmt, topic), stamp, headers)])
        self._step()

    def advance_time(self, seconds: float) -> None:
        """Move processing time forward by ``seconds``: processing-time timers that are
        due fire, and partitions silent for their source's ``idle_timeout`` stop holding
        the watermark back (with all of them idle it moves with this clock, as in a worker)."""
        if seconds < 0:
            raise ValueError(f"advance_time({seconds!r}): time does not go back")
        target = self._now + round(seconds * 1000)
        for moment in self._idle_moments(self._now, target):
            self._now = moment  # a worker ticks every 100 ms: it sees each go idle
            self._tick()
        self._now = target
        self._step()

    def advance_watermark(self, timestamp: int) -> None:
        """Move the watermark to at least ``timestamp`` (epoch ms) — as if every partition
        had shown that much event time — and fire what is due. It never goes back."""
        self._forced = max(self._forced, int(timestamp))
        self._step()

    @property
    def watermark(self) -> int | None:
        """The watermark the operators were last given (epoch ms); None before any."""
        wm = max(self._tracker.watermark, self._forced)
        return None if wm == NO_TIME else wm

    @property
    def now(self) -> int:
        """The processing time (epoch ms)."""
        return self._now

    # -- what came out -------------------------------------------------------
    def output(self, topic: str) -> list[Any]:
        """The values written to ``topic`` (a sink or late topic) so far, in order."""
        return [record.value for record in self.output_records(topic)]

    def output_records(self, topic: str) -> list[OutputRecord]:
        """The records written to ``topic`` so far, with keys and timestamps."""
        decode = self._formats.get(topic)
        if decode is None:
            raise ValueError(f"job {self.job.name!r} writes {sorted(self._formats)}; not {topic!r}")
        return [
            OutputRecord(_text(r.key), decode(r.value), r.timestamp)
            for r in self._producer.written(topic)
        ]

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Records that failed (``on_error="dlq"``, the default), in order."""
        letters = []
        for r in self._producer.written(self.plan.dlq_topic):
            h = {name: data.decode() for name, data in r.headers}
            letters.append(
                DeadLetter(
                    key=r.key,
                    value=r.value,
                    error=h["weir.error"],
                    reason=h["weir.reason"],
                    operator=h["weir.operator"],
                    topic=h["weir.source.topic"],
                    partition=int(h["weir.source.partition"]),
                    offset=int(h["weir.source.offset"]),
                )
            )
        return letters

    def late(self, operator: str | None = None) -> int:
        """How many records arrived after their windows were gone (all windows, or the
        window operator named ``operator``); a window's ``late_topic`` gets them too."""
        return self._count("weir_records_late_total", operator, "late")

    def failed(self, operator: str | None = None, reason: str | None = None) -> int:
        """How many records failed (in ``operator``, for ``reason``), whatever the job's
        ``on_error`` policy did with them."""
        return self._count("weir_records_failed_total", operator, reason)

    # -- keyed state ---------------------------------------------------------
    def state(self, operator: str, key: Any, *, partition: int | None = None) -> Any:
        """``key``'s committed state in the stateful operator named ``operator``, as the
        ``/state/<operator>/<key>`` endpoint shows it, or None if it has none: a
        ``reduce``/``aggregate`` as it would emit it, a window operator's
        ``open_windows`` (with ``fired`` and the results so far), a process function's
        ``value_state``, ``list_state``, ``map_state`` and pending ``timers``.
        ``partition``: where to look when one key's records went to several partitions."""
        kept = self._stateful(operator)
        key_bytes = encode_key(key)
        if key_bytes is None:
            raise ValueError("state(key=None): keyed state needs a key")
        found = {}
        for p in range(self._partitions[kept.input_topic]):
            skey = state_key(p, key_bytes, self.plan.max_key_groups)
            data = self._store.get(kept.states[0], skey)
            if data is not None and partition in (None, p):
                found[p] = orjson.loads(data)
        if len(found) > 1:
            raise ValueError(
                f"key {key!r} has state in partitions {sorted(found)} of {kept.input_topic!r};"
                " pass partition= to pick one"
            )
        return next((present_state(kept.op, key, v) for v in found.values()), None)

    def state_keys(self, operator: str) -> list[str | bytes]:
        """The keys (as text; bytes if not UTF-8) with committed state in ``operator``."""
        kept = self._stateful(operator)
        keys = {
            _text(key_of(skey))
            for p in range(self._partitions[kept.input_topic])
            for skey, _ in self._store.items(kept.states[0], p)
        }
        return sorted(keys, key=repr)

    def _stateful(self, operator: str) -> KeyedState:
        for kept in self.plan.stateful:
            if kept.name == operator:
                return kept
        names = sorted(k.name for k in self.plan.stateful)
        raise ValueError(f"job {self.job.name!r} has no stateful operator {operator!r}: {names}")

    # -- the worker's loop, step by step ---------------------------------------
    def _step(self) -> None:
        """Steps 1-4 of the module doc, until no repartitioned record is left."""
        while True:
            self._run_slots()  # Step 1
            self._tick()  # Step 2
            self._checkpoint()  # Step 3
            pending = self._repartitioned()  # Step 4
            if not pending:
                return
            self._deliver(pending)

    def _deliver(self, records: list[tuple[str, int, bytes | None, bytes, int, Any]]) -> None:
        """Route records as the fetch loop does: per slot, per partition."""
        msgs = []
        for topic, partition, key, value, stamp, headers in records:
            tp = (topic, partition)
            offset = self._offsets.get(tp, 0)
            self._offsets[tp] = offset + 1
            self._seen[tp] = self._now / 1000
            msgs.append(_Record(topic, partition, offset, key, value, headers, stamp))
        per_slot, _, control = self._router.route(msgs)
        self._pool.dispatch(per_slot)
        if control:  # after the records before them, as the worker's fetch loop does
            self._channels.observe(control)

    def _tick(self) -> None:
        """The worker's watermark tick, on the tester's clock."""
        if not self._tracker:
            return
        self._tracker.advance(self._now / 1000, self._router.pins, (), self._progress)
        forced, marks = self._forced, self._tracker.watermarks
        values = {t: max(marks.get(t, NO_TIME), forced) for t in self._tracker.sources}
        self._pool.broadcast(Watermark(values, self._now))
        self._run_slots()

    def _announcements(self) -> tuple[dict[tuple[str, int], Announced], dict[str, int]]:
        """What the tracker says of every partition, and each topic's watermark, for the
        watermark channels' checkpoint step (as `Worker._announcements`)."""
        now = self._now / 1000
        values = self._tracker.announcements(now, self._router.pins, (), self._progress)
        return values, dict(self._tracker.watermarks)

    def _idle_moments(self, start: int, end: int) -> list[int]:
        """The times in ``(start, end)`` (epoch ms) at which a partition becomes idle:
        its source's ``idle_timeout`` after its last record (or after the start)."""
        moments = set()
        for tp in self._router.pins:
            clock = self._tracker.sources.get(tp[0])
            if clock is None or clock.idle_timeout_s is None:
                continue
            last = max(self._seen.get(tp, self._started), self._started)
            moment = int((last + clock.idle_timeout_s) * 1000) + 1
            if start < moment < end:
                moments.add(moment)
        return sorted(moments)

    def _checkpoint(self) -> None:
        """Barrier, acknowledgements with the epoch's writes, apply, release."""
        self._checkpoint_id += 1
        checkpoint = self._checkpoint_id
        self._acks = {}
        announcements = self._channels.checkpoint()  # at the barrier, as a worker takes them
        self._pool.broadcast(Barrier(checkpoint))
        try:
            self._run_slots()
        except Exception as exc:
            exc.add_note(
                f"(JobTester: in checkpoint {checkpoint}, where a worker would fail the"
                " checkpoint and restart from the last one)"
            )
            raise
        if len(self._acks) != len(self._slots):
            raise AssertionError(f"slots {sorted(self._acks)} acknowledged checkpoint {checkpoint}")
        if self._store is not None:
            writes = [w for slot in sorted(self._acks) for w in self._acks[slot]]
            self._store.apply(writes, {}, checkpoint)
            for slot in self._slots:
                slot.state.applied()
        announcements.write(self._producer)  # behind everything the epoch wrote
        self._channels.committed(announcements)
        self._pool.broadcast(Release(checkpoint))
        self._run_slots()

    def _on_ack(self, slot: int, checkpoint: int, writes: list[Write]) -> None:
        self._acks[slot] = writes

    def _run_slots(self) -> None:
        """Run every slot until no inbox holds anything (exchanges refill them)."""
        while True:
            busy = [s for s in self._slots if len(s.inbox) or s.replay]
            if not busy:
                return
            for slot in busy:
                slot.process_inbox()

    def _repartitioned(self) -> list[tuple[str, int, bytes | None, bytes, int, Any]]:
        """Records written to repartition topics (and the topics of multi-input
        operators) since last time, placed on partitions as Weir's producer places them
        (murmur2 of the key, or the partition the writer gave)."""
        out = []
        for topic in sorted(self._repartitions):
            written = self._producer.written(topic)
            count = self._partitions[topic]
            for r in written[self._read[topic] :]:
                if r.partition is not None:  # a broadcast side's copy, placed by its writer
                    partition = r.partition
                else:
                    partition = 0 if r.key is None else partition_for(r.key, count)
                out.append((topic, partition, r.key, r.value, r.timestamp, r.headers or None))
            self._read[topic] = len(written)
        return out

    def _count(self, metric: str, operator: str | None, reason: str | None) -> int:
        total = 0.0
        for family in self._metrics.registry.collect():
            for sample in family.samples:
                labels = sample.labels
                if (
                    sample.name == metric
                    and operator in (None, labels.get("operator"))
                    and reason in (None, labels.get("reason"))
                ):
                    total += sample.value
        return int(total)


# -- what stands in for Kafka ----------------------------------------------------------


class _Record:
    """A consumed Kafka record, with the accessors of ``confluent_kafka.Message`` the
    runtime uses (the client's own class cannot be created from Python)."""

    __slots__ = ("_headers", "_key", "_offset", "_partition", "_stamp", "_topic", "_value")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None,
        timestamp: int,
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value, self._headers, self._stamp = key, value, headers, timestamp

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_CREATE_TIME, self._stamp

    def error(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._value)


class _Written:
    __slots__ = ("headers", "key", "partition", "timestamp", "value")

    def __init__(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: Any,
        timestamp: int,
        partition: int | None = None,
    ):
        self.key, self.value, self.headers, self.timestamp = key, value, headers or [], timestamp
        self.partition = partition


class _Producer:
    """The worker's producer: keeps what is written to the topics the tester reads."""

    def __init__(self, topics: set[str]) -> None:
        self._topics: dict[str, list[_Written]] = {t: [] for t in topics}

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
        kept = self._topics.get(topic)
        if kept is not None:  # changelog records are not read back: the store has them
            where = None if partition < 0 else partition  # -1: the partitioner decides
            kept.append(_Written(key, value, headers, timestamp, where))

    def poll(self, timeout: float = 0.0) -> int:
        return 0

    def written(self, topic: str) -> list[_Written]:
        return self._topics[topic]


class _DrainingInbox(Inbox):
    """A slot inbox that answers `Stop` once it is empty, so `Slot.process_inbox`
    returns to the tester instead of waiting."""

    def get(self) -> tuple[int, int, Any]:
        if not len(self):
            return SOURCES, FETCHER, Stop()
        return super().get()


class _Progress:
    """What the partitions have shown, for the watermark rules: event time from the
    slots, last record time from the tester's clock; everything sent is read at once."""

    def __init__(
        self, slots: list[Slot], seen: dict[TopicPartition, float], channels: WatermarkChannels
    ) -> None:
        self.slots = slots
        self.seen = seen
        self.channels = channels

    def max_timestamp(self, tp: TopicPartition) -> int | None:
        return max((s.max_ts[tp] for s in self.slots if tp in s.max_ts), default=None)

    def last_seen(self, tp: TopicPartition) -> float | None:
        return self.seen.get(tp)

    def caught_up(self, tp: TopicPartition) -> bool:
        return True

    def reached_watermark(self, tp: TopicPartition) -> int:
        return NO_TIME

    def announced(self, tp: TopicPartition) -> UpstreamTables | None:
        return self.channels.table(tp)


# -- helpers -------------------------------------------------------------------------


def _partition_counts(plan: PhysicalPlan, partitions: int | dict[str, int]) -> dict[str, int]:
    """Partitions per topic the job reads: sources as given (default 1), repartition
    topics as their ``key_by(partitions=)`` or their upstream source says."""
    user = plan.user_source_topics
    if isinstance(partitions, dict):
        unknown = sorted(set(partitions) - set(user))
        if unknown:
            raise ValueError(f"partitions for {unknown}: the job reads {user}")
        counts = {t: partitions.get(t, 1) for t in user}
    else:
        counts = dict.fromkeys(user, partitions)
    for topic, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"partitions={n!r} for {topic!r}: expected an int >= 1")
    for source in plan.sources:
        if isinstance(source, RepartitionSource):
            counts[source.topic] = source.partitions or counts[source.upstream]
    return counts


def _formats(plan: PhysicalPlan) -> dict[str, Callable[[bytes], Any]]:
    """How to decode what each written topic holds: sinks in their format, late topics
    as JSON."""
    decoders: dict[str, Callable[[bytes], Any]] = {}
    for root in plan.roots:
        for node in root.walk():
            op = node.op
            if isinstance(op, Sink):
                decoders.setdefault(op.topic, decoder(op.value, SerdeContext(op.topic)))
            elif isinstance(op, Window) and op.late_topic is not None:
                decoders.setdefault(op.late_topic, orjson.loads)
    return decoders


def _encode(value: Any, fmt: Serde, topic: str) -> bytes:
    """A fed value as the source topic would hold it: bytes as they are, anything else
    in the source's format."""
    if isinstance(value, bytes):
        return value
    return encoder(fmt, SerdeContext(topic))(value)


def _text(key: bytes | None) -> str | bytes | None:
    """A key as text when it is UTF-8 (as ``key_by()`` reads record keys)."""
    try:
        return key if key is None else key.decode()
    except UnicodeDecodeError:
        return key


def _raise(exc: BaseException) -> None:
    raise exc


def _close(store: StateStore | None, directory: Path | None) -> None:
    if store is not None:
        store.close()
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
