"""The worker process: one consumer, one producer, N slot threads, one coordinator.

The fetcher loop (this module, on the main thread) consumes batches, routes
them to slots (`service.router`), applies backpressure by pausing the
partitions that feed a full slot, and drives checkpoints
(`service.checkpoint`). librdkafka does the network I/O on its own threads;
Python threads only hand batches around.

Rebalances (cooperative-sticky) run inside ``consume()``: before partitions are
revoked, and before an assignment would move a partition between slots, the
worker drains — a synchronous checkpoint — so every record fetched so far is
processed and committed before anything moves. A failed commit, a lost
assignment or an output that could not be delivered rolls the worker back to
its last committed checkpoint: abort, seek to the committed offsets, fresh
slots.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from operators import Job
from operators.keyed import states_of
from operators.windowed import NO_WATERMARK
from service.checkpoint import CheckpointCoordinator, CheckpointFailed
from service.config import WorkerConfig
from service.consumers import GroupConsumers
from service.exceptions import JobLoadError, KafkaUnavailable, WorkerFailed
from service.metrics import Metrics
from service.restore import Restorer, StatefulOperator
from service.router import PINNED, SlotRouter
from service.slots import FETCHER, SOURCES, Ownership, Slot, Stop, Watermark
from service.topics import (
    connect_admin,
    ensure_topic,
    partition_counts,
    record_size_limits,
    require_topics,
)
from state.epoch import EpochBuffer
from state.keygroups import key_group_range
from state.serde import JsonSerde
from state.store import StateStore

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]
HOLD_MAX_S = 5.0  # longest the fetcher stops consuming because every slot is full
QUEUE_TARGET_S = 0.5  # a slot's queue holds at most about this much work
PROBE_QUEUE = 64  # a slot's queue bound before its speed is known


class Worker:
    """Runs one job in this process until stopped."""

    def __init__(self, job: Job, config: WorkerConfig, process_index: int | None = None) -> None:
        self.job = job
        self.config = config
        self.group = config.group or job.name
        job.bind(self.group)
        suffix = "" if process_index is None else f".{process_index}"
        self.worker_id = f"{config.worker_id}{suffix}"
        self.transactional_id = f"{self.group}.{self.worker_id}"
        self.dlq_topic = f"{self.group}.dlq"
        self.metrics = Metrics(job.name)
        self.router = SlotRouter(config.slots, job.max_key_groups)
        self.slots: list[Slot] = []
        self.paused: set[TopicPartitionKey] = set()
        self.full_slots: set[int] = set()
        self.stopping = threading.Event()
        self.fatal: BaseException | None = None
        self.restarts = 0
        self.fencings: list[float] = []  # when the producer was last fenced
        self.size_limits: dict[str, int] = {}
        self.lag: dict[TopicPartitionKey, int] = {}
        self.holding_since: float | None = None
        self.fetch_size = PROBE_QUEUE
        self.topic_partitions: dict[str, int] = {}
        self.delivery_failures: list[str] = []
        self.state = "starting"
        self.started = time.time()
        self.consumer: GroupConsumers | None = None
        self.producer: Producer | None = None
        self.admin: AdminClient | None = None
        self.coordinator: CheckpointCoordinator | None = None
        self.stateful = [
            StatefulOperator(
                node.name, topic, f"{self.group}.{node.name}.changelog", states_of(node)
            )
            for node, topic in job.stateful()
        ]
        self.event_sources = {src.options["topic"]: src for src in job.event_time_sources()}
        self.watermark = NO_WATERMARK
        self.assigned_at: dict[TopicPartitionKey, float] = {}
        self.all_idle: tuple[float, int] | None = None  # since when, from which watermark
        self.store: StateStore | None = None
        self.restorer: Restorer | None = None
        self.restoring: dict[TopicPartitionKey, int] = {}  # partition -> restore token

    # -- Kafka clients --------------------------------------------------------
    def _common_conf(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.config.bootstrap,
            "client.id": self.transactional_id,
            "logger": logging.getLogger("weir.kafka"),  # librdkafka's log, in our format
        }

    def _passthrough(self, role: str) -> dict[str, str]:
        """``kafka.X`` goes to every client; ``kafka.consumer.X`` etc. to that one only."""
        out = {}
        for key, value in self.config.kafka.items():
            head, _, rest = key.partition(".")
            if head in ("consumer", "producer", "admin"):
                if head == role:
                    out[rest] = value
            else:
                out[key] = value
        return out

    def _consumer_conf(self) -> dict[str, Any]:
        return {
            **self._common_conf(),
            "group.id": self.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "isolation.level": "read_committed",
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 2000,
            "queued.max.messages.kbytes": 16384,
            # Notice a source topic that gains partitions within 30 s (default 5 min).
            "topic.metadata.refresh.interval.ms": 30000,
            # librdkafka >= 2.3 backs off 1 s once its prefetch queue is full, which
            # starves a fast pipeline on a backlog; keep refilling it promptly.
            "fetch.queue.backoff.ms": 10,
            **self._passthrough("consumer"),
        }

    def _producer_conf(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            **self._common_conf(),
            "linger.ms": 5,
            "enable.idempotence": True,
            "partitioner": "murmur2_random",  # the Java client's: same key, same partition
            "queue.buffering.max.messages": 500000,
            # Batches must fit the smallest topic limit, or the broker refuses them whole.
            "batch.size": min([1_000_000, *(v + 512 for v in self.size_limits.values())]),
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
            # Never re-bootstrap. When every broker connection drops at once (a network
            # blip), librdkafka 2.16 re-bootstraps and decommissions its broker handles
            # but keeps the decommissioned one cached as the group coordinator, and the
            # next send_offsets_to_transaction waits on it for good, past its timeout
            # (librdkafka #5511, #5456; 2.12 does not). Without re-bootstrap the handle
            # reconnects and the call completes once the network is back. The cost: a
            # producer whose brokers all change address does not look them up again.
            "metadata.recovery.strategy": "none",
        }
        if self.config.exactly_once:
            conf["transactional.id"] = self.transactional_id
            conf["transaction.timeout.ms"] = self._transaction_timeout_ms()
        conf.update(self._passthrough("producer"))
        return conf

    def _transaction_timeout_ms(self) -> int:
        """Short, so a dead worker's open transaction blocks read_committed readers (and
        state restores) briefly — Kafka Streams uses 10 s — but longer than one epoch."""
        return max(10000, 2 * self.config.checkpoint_interval_ms + 5000)

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.delivery_failures.append(f"{msg.topic()}: {err.str()}")

    def _take_delivery_failures(self) -> list[str]:
        failures, self.delivery_failures = self.delivery_failures, []
        return failures

    # -- lifecycle ----------------------------------------------------------
    def prepare(self) -> None:
        """Check Kafka and the topics, create Weir's own, and open the clients."""
        cfg = self.config
        admin = connect_admin(
            {**self._common_conf(), **self._passthrough("admin")},
            cfg.bootstrap,
            cfg.connect_timeout_s,
        )
        require_topics(
            admin, self.job.user_source_topics(), self.job.sink_topics(), cfg.connect_timeout_s
        )
        self.admin = admin
        counts = partition_counts(admin, cfg.connect_timeout_s)
        for source in self.job.repartitions():
            topic, declared = source.options["topic"], source.options["partitions"]
            have = counts.get(topic)
            if declared and have is not None and have != declared:
                raise JobLoadError(
                    f"repartition topic {topic!r} has {have} partitions but the job's"
                    f" key_by(partitions={declared}) asks for {declared}; the keyed state"
                    f" behind it is partitioned by the existing count. Keep partitions={have},"
                    " or start a new --group to repartition"
                )
            wanted = declared or counts[source.options["upstream"]]
            ensure_topic(admin, topic, wanted, cfg.connect_timeout_s)
        counts = partition_counts(admin, cfg.connect_timeout_s)
        self.topic_partitions = {t: counts[t] for t in self.job.source_topics()}
        if self.job.on_error == "dlq":
            ensure_topic(admin, self.dlq_topic, 1, cfg.connect_timeout_s)
        if self.stateful:
            self._prepare_state(admin)
        written = [*self.job.sink_topics(), *self.job.repartition_topics()]
        if self.job.on_error == "dlq":
            written.append(self.dlq_topic)
        self.size_limits = record_size_limits(admin, written, cfg.connect_timeout_s)
        self.producer = Producer(self._producer_conf())
        if cfg.exactly_once:
            try:
                self.producer.init_transactions(cfg.connect_timeout_s)
            except KafkaException as exc:
                raise KafkaUnavailable(
                    f"cannot initialise transactions as {self.transactional_id!r}:"
                    f" {exc.args[0].str()}"
                ) from None
            self.producer.begin_transaction()
        self.consumer = GroupConsumers(
            self._consumer_conf(), [self.job.user_source_topics(), self.job.repartition_topics()]
        )
        self.coordinator = CheckpointCoordinator(
            self.consumer,
            self.producer,
            self.router,
            lambda: self.slots,
            self.metrics,
            cfg.exactly_once,
            cfg.checkpoint_interval_ms / 1000,
            # A commit still waiting when the transaction times out is lost anyway; give
            # up sooner, roll back, and keep serving the group (a rebalance may be what
            # it waits for).
            commit_timeout_s=self._transaction_timeout_ms() / 2000,
            delivery_errors=self._take_delivery_failures,
            store=self.store,
            changelog_ends=self._changelog_ends,
            state_operators={s: (op.name, op.changelog) for op in self.stateful for s in op.states},
            slot_failure=lambda: self.fatal,
        )

    def _prepare_state(self, admin: AdminClient) -> None:
        """Changelog topics (compacted, partitioned like the input) and the local store."""
        timeout = self.config.connect_timeout_s
        counts = partition_counts(admin, timeout)
        for op in self.stateful:
            ensure_topic(
                admin, op.changelog, counts[op.source_topic], timeout, {"cleanup.policy": "compact"}
            )
            have = partition_counts(admin, timeout)[op.changelog]
            if have != counts[op.source_topic]:
                raise KafkaUnavailable(
                    f"changelog {op.changelog!r} has {have} partitions but its input"
                    f" {op.source_topic!r} has {counts[op.source_topic]}; keyed state follows"
                    " input partitions, so a source topic's partition count must not change"
                    " under a running keyed job (restore the old count, or start a new --group)"
                )
        path = Path(self.config.state_dir) / self.group / self.worker_id
        self.store = StateStore(path, [s for op in self.stateful for s in op.states])

    def _changelog_ends(self, tps: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """High watermarks of changelog partitions just committed to (only we write them).

        Asked again, with fresh metadata, until ``connect_timeout_s`` has passed: right
        after the connections dropped the admin client may not know the partition leaders
        yet ("No leaders found"), and after a broker restart it sends leader epochs the
        broker has moved past ("FENCED_LEADER_EPOCH") until its metadata is refreshed;
        either fails at once, although the commit went through."""
        timeout = self.config.connect_timeout_s
        specs = {TopicPartition(t, p): OffsetSpec.latest() for t, p in tps}
        deadline = time.monotonic() + timeout
        while True:
            futures = self.admin.list_offsets(specs, request_timeout=timeout)
            try:
                return {
                    (tp.topic, tp.partition): f.result(timeout=timeout).offset
                    for tp, f in futures.items()
                }
            except KafkaException as exc:
                if time.monotonic() >= deadline:
                    raise
                log.debug("changelog ends not known yet (%s); asking again", exc)
                with contextlib.suppress(KafkaException):
                    self.admin.list_topics(timeout=timeout)
                time.sleep(0.2)

    def run(self) -> None:
        """Process until `stop` (or SIGTERM/SIGINT when on the main thread); raises on failure."""
        if self.consumer is None:
            self.prepare()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        # Collect garbage less often: the hot path allocates many short-lived tuples,
        # and the default thresholds spend ~10% of CPU in the collector (measured).
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)
        self._start_slots()
        if self.stateful:
            self.restorer = Restorer(
                {**self._consumer_conf(), "group.id": f"{self.group}.restore",
                 "enable.partition.eof": True, "client.id": f"{self.transactional_id}.restore"},
                self.admin,
                self.store,
                self.stateful,
                self.metrics,
                # A restore may wait for a dead worker's open transaction: the broker
                # aborts it after its timeout, checking every 10 s by default.
                stall_timeout_s=max(60.0, 2 * self._transaction_timeout_ms() / 1000 + 20),
                standby=self.config.standby_replicas > 0,
            )  # fmt: skip
            self.restorer.start()
        self.consumer.subscribe(self._on_assign, self._on_revoke, self._on_lost)
        log.info(
            "worker %s running job %s: group=%s slots=%d guarantee=%s",
            self.worker_id,
            self.job.name,
            self.group,
            self.config.slots,
            self.config.guarantee,
        )
        try:
            self._loop()
            self._shutdown()
        except KafkaException as exc:  # e.g. a fatal producer error: one line, not a traceback
            self._abandon()
            raise WorkerFailed(f"Kafka client failed: {exc.args[0].str()}") from exc
        except BaseException:
            self._abandon()
            raise

    def stop(self) -> None:
        """Ask the worker to finish its current checkpoint and leave (thread-safe)."""
        self.stopping.set()

    def _loop(self) -> None:
        consumer, router, coordinator = self.consumer, self.router, self.coordinator
        records_in = self.metrics.records_in
        job = self.job.name
        in_counters: dict[TopicPartitionKey, Any] = {}
        last_sample = last_watermark = time.monotonic()
        self.state = "running"
        while not self.stopping.is_set():
            if self._backpressure():
                msgs = []
                time.sleep(0.002)  # every slot is full: let them drain
            else:
                # Short waits while a checkpoint is in flight, so its commit follows
                # the slots' acknowledgements promptly.
                wait = 0.005 if coordinator.pending is not None else 0.05
                msgs = consumer.consume(self.fetch_size, wait)
            try:
                self.producer.poll(0)  # serves delivery errors and librdkafka's log
            except KafkaException as exc:  # a fatal producer error, e.g. fenced
                self._rollback(f"producer failed: {exc.args[0].str()}")
            self._check_fatal()
            if self.restoring:
                self._restores_done()
            if msgs:
                per_slot, counts = router.route(self._without_errors(msgs))
                for slot, batches in zip(self.slots, per_slot, strict=True):
                    for batch in batches:
                        slot.inbox.put(SOURCES, FETCHER, batch, len(batch.elems))
                for tp, n in counts.items():
                    counter = in_counters.get(tp)
                    if counter is None:
                        counter = in_counters[tp] = records_in.labels(job, tp[0], str(tp[1]))
                    counter.inc(n)
            try:
                coordinator.poll()
                if coordinator.due():
                    coordinator.trigger()
            except CheckpointFailed as exc:
                self._rollback(f"checkpoint failed: {exc}")
            now = time.monotonic()
            if self.event_sources and now - last_watermark >= 0.1:
                self._advance_watermark(now)
                last_watermark = now
            if now - last_sample >= 1.0:
                self._sample(now - last_sample)
                last_sample = now

    def _without_errors(self, msgs: list[Any]) -> list[Any]:
        ok = [m for m in msgs if m.error() is None]
        if len(ok) != len(msgs):
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.fatal():
                        raise WorkerFailed(f"consumer failed: {err.str()}")
                    log.warning("consumer: %s", err.str())
        return ok

    def _restores_done(self) -> None:
        if self.restorer.error is not None:
            raise WorkerFailed(f"state restore failed: {self.restorer.error}")
        done = [tp for tp, token in self.restorer.finished() if self.restoring.get(tp) == token]
        for tp in done:
            del self.restoring[tp]
            self.assigned_at[tp] = time.monotonic()  # its idle clock starts now
            log.info("%s[%d] restored; processing it", *tp)
        if done:
            self._ownership()
        # resumed by _backpressure, which keeps restoring partitions paused

    # -- event time ---------------------------------------------------------
    def _ownership(self) -> None:
        """Tell every slot which keyed state it owns, so windows rebuild their timers."""
        if not self.event_sources:
            return
        ready = [tp for tp in self.router.pins if tp not in self.restoring]
        n = len(self.slots)
        for slot in self.slots:
            parts: dict[str, set[int]] = {}
            if self.router.mode == PINNED:
                mine = [tp for tp in ready if self.router.pins[tp] == slot.slot]
                groups = None
            else:
                mine = ready
                groups = key_group_range(slot.slot, n, self.job.max_key_groups)
            for topic, p in mine:
                parts.setdefault(topic, set()).add(p)
            slot.inbox.put(SOURCES, FETCHER, Ownership(parts, groups))

    def _caught_up(self, tp: TopicPartitionKey) -> bool:
        """Has this worker read everything the partition holds? A partition with a
        backlog is not idle, however long since its last record was processed."""
        try:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
            # The consumer's position steps over transaction markers and aborted records
            # (which never reach the router), so on a transactional topic — repartition
            # topics, other exactly-once jobs' output — it reaches the end past the last
            # commit marker. ``high`` is the last stable offset (read_committed).
            consumed = self.consumer.position(TopicPartition(*tp))
        except KafkaException:
            return False
        if high < 0:
            return True  # nothing fetched yet from an empty partition
        routed = self.router.positions.get(tp, self.coordinator.committed.get(tp, 0))
        return max(routed, consumed) >= high

    def _restored_watermark(self, tp: TopicPartitionKey) -> int:
        """The watermark ``tp`` had reached before a restart, from its timer operators' state."""
        floors = [
            getattr(op, "floors", {}).get(tp[1], NO_WATERMARK)
            for slot in self.slots
            if slot.chain is not None
            for op in slot.chain.windows
            if op.topic == tp[0]
        ]
        return max(floors, default=NO_WATERMARK)

    def _advance_watermark(self, now: float) -> None:
        """The worker's watermark: the minimum over its active partitions of
        (largest event time seen - max out-of-orderness). A partition still
        restoring its state holds it where it is (its backlog is unread, its
        timers not yet rebuilt). Partitions idle for their source's idle_timeout
        do not hold it back; when all are idle it advances with processing time,
        so the last windows close."""
        candidates = []
        for tp in self.router.pins:
            source = self.event_sources.get(tp[0])
            if source is None:
                continue
            if tp in self.restoring:
                candidates.append(NO_WATERMARK)
                continue
            seen = [s.last_seen[tp] for s in self.slots if tp in s.last_seen]
            last = max([*seen, self.assigned_at.get(tp, now)])  # idle since when
            idle = source.options["idle_timeout"]
            if idle is not None and now - last > idle and self._caught_up(tp):
                continue  # idle: nothing new for idle_timeout, and nothing left to read
            stamps = [s.max_ts[tp] for s in self.slots if tp in s.max_ts]
            ooo = round(source.options["max_out_of_orderness"] * 1000)
            seen_wm = max(stamps) - ooo if stamps else NO_WATERMARK
            candidates.append(max(seen_wm, self._restored_watermark(tp)))
        if candidates:
            new = min(candidates)
            self.all_idle = None
        elif self.router.pins and self.watermark == NO_WATERMARK:
            # All idle right after a restart: start from the watermark the partitions had
            # reached (kept in state), so windows restored from state still close.
            floors = [self._restored_watermark(tp) for tp in self.router.pins]
            new = min(floors) if floors else NO_WATERMARK
        elif self.router.pins:
            if self.all_idle is None:
                self.all_idle = (now, self.watermark)
            since, base = self.all_idle
            new = base + round((now - since) * 1000)
        else:
            new = self.watermark
        if new > self.watermark:
            self.watermark = new
            self.metrics.watermark_lag.set(max(0.0, time.time() - new / 1000))
        now_ms = int(time.time() * 1000)
        for slot in self.slots:  # every tick: processing-time timers need the clock too
            slot.inbox.put(SOURCES, FETCHER, Watermark(self.watermark, now_ms))

    def _check_fatal(self) -> None:
        """A slot failed: restart from the last checkpoint (Flink's restart strategies),
        or give up with the cause once the attempts are spent."""
        if self.fatal is None:
            return
        exc, self.fatal = self.fatal, None
        if isinstance(exc, WorkerFailed):  # the job's error policy says stop
            raise exc
        cause = f"{type(exc).__name__}: {exc}"
        cfg = self.config
        if cfg.restart_strategy == "none" or self.restarts >= cfg.restart_attempts:
            raise WorkerFailed(
                f"slot failed after {self.restarts} restart(s), giving up: {cause}"
            ) from exc
        delay = cfg.restart_delay_ms / 1000
        if cfg.restart_strategy == "exponential-delay":
            delay = min(60.0, delay * 2**self.restarts)
        self.restarts += 1
        self.metrics.restarts.labels(self.job.name).inc()
        log.warning(
            "slot failed (%s); restart %d of %d from the last checkpoint in %.1fs",
            cause,
            self.restarts,
            cfg.restart_attempts,
            delay,
        )
        self.stopping.wait(delay)  # well within max.poll.interval.ms (delays cap at 60 s)
        self._rollback(f"restart after: {cause}")

    def _on_slot_fatal(self, exc: BaseException) -> None:
        log.error("slot failed: %s: %s", type(exc).__name__, exc)
        self.fatal = exc

    # -- slots ------------------------------------------------------------
    def _start_slots(self) -> None:
        serdes = {s: JsonSerde() for op in self.stateful for s in op.states}
        changelogs = {s: op.changelog for op in self.stateful for s in op.states}
        slots: list[Slot] = []
        for i in range(self.config.slots):
            slots.append(
                Slot(
                    i,
                    slots,
                    self.job.sources,
                    self.job.max_key_groups,
                    self.producer,
                    self.job.on_error,
                    self.dlq_topic,
                    self.metrics,
                    self.coordinator.ack,
                    self._on_slot_fatal,
                    state=None if self.store is None else EpochBuffer(self.store, serdes),
                    changelogs=changelogs,
                    size_limits=self.size_limits,
                )
            )
        self.slots = slots
        for slot in slots:
            slot.start()
        self._ownership()
        if self.event_sources:
            now_ms = int(time.time() * 1000)
            for slot in slots:
                slot.inbox.put(SOURCES, FETCHER, Watermark(self.watermark, now_ms))

    def _stop_slots(self, timeout: float) -> None:
        for slot in self.slots:
            slot.discard = True
            slot.inbox.stop(Stop())  # what it still holds is discarded anyway
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            slot.join(max(0.0, deadline - time.monotonic()))
            if slot.is_alive():
                log.warning("slot %d did not stop within %.0fs; abandoning it", slot.slot, timeout)

    def _backpressure(self) -> bool:
        """Backpressure. A slot whose queue is over ``slot_queue_records`` is full
        until it drains to half.

        When every slot is full, the fetcher holds off consuming (librdkafka's
        bounded prefetch queue keeps memory bounded) rather than pausing, since a
        pause throws away what was prefetched for those partitions; returns True
        then. When only some slots are full, or holding has lasted ``HOLD_MAX_S``,
        the partitions feeding the full slots are paused and consuming goes on, so
        the other slots keep working and the worker keeps its group membership
        however slow a slot is."""
        room = self.config.batch_size  # records to fetch next: what the slots can take
        for slot in self.slots:
            high = self._queue_limit(slot)
            queued = slot.inbox.records
            if queued > high or (slot.slot in self.full_slots and queued > high // 2):
                self.full_slots.add(slot.slot)
            else:
                self.full_slots.discard(slot.slot)
                room = min(room, max(1, high - queued))
        now = time.monotonic()
        hold = bool(self.slots) and len(self.full_slots) == len(self.slots)
        if hold and (self.holding_since is None or now - self.holding_since < HOLD_MAX_S):
            self.holding_since = self.holding_since or now
            want = set(self.restoring)
        else:
            if not hold:
                self.holding_since = None
            hold = False
            want = set(self.restoring)
            for s in self.full_slots:
                want.update(self.router.feeds(s))
        pause, resume = want - self.paused, self.paused - want
        if pause:
            log.debug("backpressure: pausing %s", sorted(pause))
            self.consumer.pause([TopicPartition(t, p) for t, p in pause])
        if resume:
            self.consumer.resume([TopicPartition(t, p) for t, p in resume])
        self.paused = want
        self.fetch_size = room
        return hold

    def _queue_limit(self, slot: Slot) -> int:
        """A slot's queue bound in records: ``slot_queue_records``, or less for a slow
        slot, so that a barrier never waits more than ``QUEUE_TARGET_S`` behind its
        queue (checkpoints keep completing well within the transaction timeout)."""
        cost = slot.stats.cost
        limit = self.config.slot_queue_records
        if cost <= 0:
            return min(limit, PROBE_QUEUE)  # until the first records show how slow it is
        return min(limit, max(1, int(QUEUE_TARGET_S / cost)))

    def _sample(self, elapsed: float) -> None:
        """Once a second: per-slot ratios and consumer lag (never per record)."""
        job = self.job.name
        for slot in self.slots:
            busy, slot.stats.busy_s = slot.stats.busy_s, 0.0
            self.metrics.slot_busy_ratio.labels(job, str(slot.slot)).set(min(1.0, busy / elapsed))
            self.metrics.slot_backpressure_ratio.labels(job, str(slot.slot)).set(
                1.0 if slot.slot in self.full_slots else 0.0
            )
        # Lag as Kafka's tools report it: log end minus the committed (processed) offset.
        committed = self.coordinator.committed
        for topic, p in self.router.partitions:
            try:
                low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(topic, p), cached=True
                )
            except KafkaException:
                continue
            if high >= 0:
                done = committed.get((topic, p), max(low, 0))
                self.lag[(topic, p)] = max(0, high - done)
                self.metrics.consumer_lag.labels(job, topic, str(p)).set(self.lag[(topic, p)])
        if self.store is not None:
            for op in self.stateful:
                size = sum(self.store.size_bytes(state) for state in op.states)
                self.metrics.state_bytes.labels(job, op.name).set(size)

    # -- rebalancing --------------------------------------------------------
    def _drain(self, why: str) -> None:
        try:
            self.coordinator.drain(self.config.shutdown_timeout_s)
        except CheckpointFailed as exc:
            self._rollback(f"checkpoint before {why} failed: {exc}")

    def _update_standby(self) -> None:
        """Standby replicas: warm copies of every stateful partition this worker does not own."""
        if self.restorer is None or not self.config.standby_replicas:
            return
        topics = {op.source_topic for op in self.stateful}
        every = {(t, p) for t in topics for p in range(self.topic_partitions.get(t, 0))}
        self.restorer.set_standby(every - set(self.router.pins))

    def _check_partition_counts(self, added: set[TopicPartitionKey]) -> None:
        """A source topic grew. Keyed state partitioned by it would be silently wrong
        (keys move to new partitions without their state), so that stops the job; a
        topic read through a repartition topic, or stateless, just gains work."""
        for topic, p in sorted(added):
            known = self.topic_partitions.get(topic)
            if known is None or p < known:
                continue
            keyed = [op.name for op in self.stateful if op.source_topic == topic]
            if keyed:
                self.fatal = WorkerFailed(
                    f"topic {topic!r} grew from {known} to at least {p + 1} partitions while"
                    f" {', '.join(keyed)} keeps keyed state partitioned by it; keys now map to"
                    " other partitions than their state. Restore the partition count, or key"
                    " with key_by(fn) (a repartition topic with a fixed count decouples state"
                    " from the source) and start a new --group"
                )
                return
            log.info("topic %s grew to at least %d partitions", topic, p + 1)
            self.topic_partitions[topic] = p + 1

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels(self.job.name).inc()
        added = {(tp.topic, tp.partition) for tp in partitions}
        self._check_partition_counts(added)
        if self.fatal is not None:
            return  # the source grew under keyed state: stop rather than restore a bad layout
        wanted = set(self.router.pins) | added
        if self.router.moves(wanted):
            self._drain("moving partitions between slots")
        self.router.reassign(wanted)
        for tp in added:
            self.assigned_at[tp] = time.monotonic()
        try:  # where each new partition starts: for lag and for "caught up" (idleness)
            for tp in consumer.committed(partitions, timeout=self.config.connect_timeout_s):
                if tp.offset >= 0:
                    self.coordinator.committed[(tp.topic, tp.partition)] = tp.offset
        except KafkaException as exc:
            log.warning("could not read committed offsets of %s: %s", sorted(added), exc)
        stateful_topics = {op.source_topic for op in self.stateful}
        restore = [tp for tp in partitions if tp.topic in stateful_topics]
        if restore:
            # Assign now (the client would right after this callback) so they can be
            # paused until their state is restored; other partitions start at once.
            consumer.incremental_assign(partitions)
            consumer.pause(restore)
            for tp in restore:
                key = (tp.topic, tp.partition)
                self.paused.add(key)
                self.restoring[key] = self.restorer.submit(key)
        self._ownership()
        self._update_standby()
        self.metrics.assigned_partitions.set(len(wanted))
        log.info("assigned %s; now %d partitions", sorted(added), len(wanted))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        if not revoked:
            return
        self.metrics.rebalances.labels(self.job.name).inc()
        if self.state != "failed":  # a failed worker commits nothing more
            self._drain("revoking partitions")
        self._forget(revoked)
        log.info("revoked %s; now %d partitions", sorted(revoked), len(self.router.pins))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self.metrics.rebalances.labels(self.job.name).inc()
        self._forget(lost)
        self._rollback(f"partitions lost {sorted(lost)}")

    def _forget(self, partitions: set[TopicPartitionKey]) -> None:
        self.router.reassign(set(self.router.pins) - partitions)
        self.paused -= partitions
        for tp in partitions & self.restoring.keys():
            self.restorer.cancel(tp)
            del self.restoring[tp]
        for tp in partitions:
            self.assigned_at.pop(tp, None)
            if self.lag.pop(tp, None) is not None:  # no stale series for partitions gone
                self.metrics.consumer_lag.remove(self.job.name, tp[0], str(tp[1]))
        self._ownership()
        self._update_standby()
        self.metrics.assigned_partitions.set(len(self.router.pins))

    # -- failure --------------------------------------------------------------
    def _rollback(self, reason: str) -> None:
        """Return to the last committed checkpoint: abort, seek back, fresh slots."""
        log.warning("rolling back to the last committed checkpoint: %s", reason)
        self._stop_slots(self.config.shutdown_timeout_s)
        if self.config.exactly_once:
            self._replace_producer()
        self._take_delivery_failures()
        committed = self._seek_to_committed()
        self.router.reset_positions()
        self.coordinator.reset(committed)
        resume = self.paused - self.restoring.keys()
        if resume:
            self.consumer.resume([TopicPartition(t, p) for t, p in resume])
        self.paused, self.full_slots = set(self.restoring), set()
        if self.config.exactly_once:
            self.producer.begin_transaction()
        self._start_slots()

    def _replace_producer(self) -> None:
        """Abort by starting over: purge the old producer and start a new one under the
        same transactional id, whose ``init_transactions`` aborts the open transaction and
        fences the old instance. A plain ``abort_transaction`` is not enough after an
        error that needs an epoch bump: librdkafka may then resend records of the aborted
        transaction under the new epoch, into the next transaction (seen: one record
        committed twice after an ILLEGAL_GENERATION offset commit and a skipped sequence)."""
        old = self.producer
        with contextlib.suppress(KafkaException):
            old.purge(in_queue=True, in_flight=True)
        try:
            old.abort_transaction(1.0)
        except KafkaException as exc:
            if exc.args[0].fatal():
                self._fenced(exc.args[0].str())
        with contextlib.suppress(KafkaException):  # raises the old one's fatal error again
            old.poll(0)  # serve the purged records' reports
        self.producer = Producer(self._producer_conf())
        self.producer.init_transactions(self.config.connect_timeout_s)
        self.coordinator.producer = self.producer

    def _fenced(self, cause: str) -> None:
        """The transactional producer was fenced (e.g. the broker aborted a transaction
        that outlived transaction.timeout.ms while this worker was stalled); a new one
        fences any older instance in turn. If that keeps happening, another live worker
        uses this worker id."""
        now = time.monotonic()
        self.fencings = [t for t in self.fencings if now - t < 300] + [now]
        if len(self.fencings) > 3:
            raise WorkerFailed(
                f"producer {self.transactional_id!r} was fenced {len(self.fencings)} times in"
                f" 5 minutes ({cause}); is another worker running with --worker-id"
                f" {self.worker_id}?"
            )
        log.warning("producer fenced (%s); starting a new one", cause)

    def _seek_to_committed(self) -> dict[TopicPartitionKey, int]:
        tps = [TopicPartition(t, p) for t, p in self.router.partitions]
        if not tps:
            return {}
        committed = self.consumer.committed(tps, timeout=self.config.connect_timeout_s)
        out = {}
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else -2  # OFFSET_BEGINNING
            try:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:
                log.warning("seek %s[%d] to %d: %s", tp.topic, tp.partition, offset, exc)
            if tp.offset >= 0:
                out[(tp.topic, tp.partition)] = tp.offset
        return out

    def _shutdown(self) -> None:
        """Clean stop: last checkpoint, leave the group, stop the slots."""
        self.state = "stopping"
        log.info("stopping: committing the last checkpoint")
        self._drain("shutdown")
        self.consumer.close()  # revokes everything (drains again) and leaves the group
        self._stop_slots(self.config.shutdown_timeout_s)
        if self.config.exactly_once:
            self.producer.abort_transaction(self.config.shutdown_timeout_s)  # the empty next one
        self.producer.flush(self.config.shutdown_timeout_s)
        self._close_state()
        self.state = "stopped"
        log.info("stopped")

    def _close_state(self) -> None:
        if self.restorer is not None:
            self.restorer.stop()
            self.restorer.join(10)
        if self.store is not None and not (self.restorer and self.restorer.is_alive()):
            self.store.close()

    def _abandon(self) -> None:
        """After a failure: stop the slots and abort; committed work stays committed."""
        self.state = "failed"
        self._stop_slots(5.0)
        if self.config.exactly_once:
            with contextlib.suppress(KafkaException):
                self.producer.abort_transaction(5.0)
        with contextlib.suppress(KafkaException, RuntimeError):
            self.consumer.close()
        self._close_state()
