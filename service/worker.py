"""The worker process: wires the runtime's owners together and runs the fetch loop.

Each concept has one owner; the worker holds none of their fields:

- `service.clients.ClientSettings` — every Kafka client's settings;
- `service.transaction.TransactionalOutput` — the producer and its transactions;
- `service.changelog.Changelogs` — the changelog topics and records;
- `service.checkpoint.CheckpointCoordinator` — barriers in, one commit out;
- `service.rebalance.Rebalancer` — partitions owned, restores, group callbacks;
- `service.flow.FlowControl` — queue bounds, pause and resume;
- `service.watermarks.WatermarkTracker` — the worker's event-time clock;
- `service.slot_pool.SlotPool` — the slot threads; `service.router` — which gets what;
- `service.restarts.RestartStrategy` and `service.sampler.MetricsSampler`.

The fetch loop, on the main thread, each iteration: (1) flow control decides
whether to consume and how much; (2) consume a batch from the group's consumers
— rebalance callbacks run inside this call; (3) serve the producer's reports;
(4) restart the slots if one failed, per the restart strategy; (5) resume
partitions whose restore finished; (6) route the batch to the slots; (7) collect
checkpoint acknowledgements, commit, trigger the next checkpoint when due;
(8) every 100 ms advance the watermark, every second sample the gauges.

A failed commit, a lost assignment or an output that could not be delivered
rolls the worker back to its last committed checkpoint (`Worker._rollback`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from operators import Job
from service.changelog import Changelogs
from service.checkpoint import CheckpointCoordinator, CheckpointFailed, StateCommit
from service.clients import ClientSettings
from service.config import WorkerConfig
from service.consumers import GroupConsumers
from service.exceptions import WorkerFailed
from service.flow import FlowControl
from service.metrics import Metrics
from service.rebalance import Rebalancer
from service.restarts import RestartStrategy
from service.restore import Restorer
from service.router import SlotRouter
from service.sampler import MetricsSampler
from service.slot_pool import SlotPool
from service.slots import FETCHER, SOURCES
from service.topics import (
    connect_admin,
    ensure_topic,
    partition_counts,
    provision_repartition_topics,
    record_size_limits,
    require_topics,
)
from service.transaction import TransactionalOutput, TransactionFailed
from service.watermarks import SlotProgress, SourceClock, WatermarkTracker
from state.store import StateStore

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]


class Worker:
    """Runs one job in this process until stopped."""

    def __init__(self, job: Job, config: WorkerConfig, process_index: int | None = None) -> None:
        self.job = job
        self.config = config
        self.group = config.group or job.name
        job.bind(self.group)
        suffix = "" if process_index is None else f".{process_index}"
        self.worker_id = f"{config.worker_id}{suffix}"
        self.dlq_topic = f"{self.group}.dlq"
        self.settings = ClientSettings(config, self.group, f"{self.group}.{self.worker_id}")
        self.metrics = Metrics(job.name)
        self.router = SlotRouter(config.slots, job.max_key_groups)
        self.changelogs = Changelogs(job, self.group)
        self.output = TransactionalOutput(
            self.settings, config.exactly_once, config.connect_timeout_s
        )
        self.watermarks = WatermarkTracker(
            {
                src.options["topic"]: SourceClock(
                    round(src.options["max_out_of_orderness"] * 1000), src.options["idle_timeout"]
                )
                for src in job.event_time_sources()
            }
        )
        self.sampler = MetricsSampler(self.metrics, self.changelogs)
        self.slots = SlotPool(
            job, config.slots, self.dlq_topic, self.metrics, self.changelogs, self._on_slot_fatal
        )
        self.restarts = RestartStrategy(config)
        self.stopping = threading.Event()
        self.fatal: BaseException | None = None
        self.size_limits: dict[str, int] = {}
        self.topic_partitions: dict[str, int] = {}
        self.state = "starting"
        self.started = time.time()
        self.consumer: GroupConsumers | None = None
        self.admin: Any = None
        self.store: StateStore | None = None
        self.restorer: Restorer | None = None
        self.flow: FlowControl | None = None
        self.coordinator: CheckpointCoordinator | None = None
        self.rebalancer: Rebalancer | None = None

    # -- lifecycle ----------------------------------------------------------
    def prepare(self) -> None:
        """Check Kafka and the topics, create Weir's own, and open the clients."""
        cfg, timeout = self.config, self.config.connect_timeout_s
        admin = connect_admin(self.settings.admin(), cfg.bootstrap, timeout)
        require_topics(admin, self.job.user_source_topics(), self.job.sink_topics(), timeout)
        self.admin = admin
        provision_repartition_topics(admin, self.job, timeout)
        counts = partition_counts(admin, timeout)
        self.topic_partitions = {t: counts[t] for t in self.job.source_topics()}
        written = [*self.job.sink_topics(), *self.job.repartition_topics()]
        if self.job.on_error == "dlq":
            ensure_topic(admin, self.dlq_topic, 1, timeout)
            written.append(self.dlq_topic)
        state = None
        if self.changelogs:
            self.changelogs.provision(admin, timeout)
            path = Path(cfg.state_dir) / self.group / self.worker_id
            self.store = StateStore(path, self.changelogs.states)
            state = StateCommit(self.store, self.changelogs, admin, timeout)
        self.size_limits = record_size_limits(admin, written, timeout)
        self.output.open(self.size_limits)
        self.consumer = GroupConsumers(
            self.settings.consumer(),
            [self.job.user_source_topics(), self.job.repartition_topics()],
        )
        self.flow = FlowControl(self.consumer, cfg.slot_queue_records, cfg.batch_size)
        self.coordinator = CheckpointCoordinator(
            self.consumer,
            self.output,
            self.router,
            lambda: self.slots.slots,
            self.metrics,
            cfg.checkpoint_interval_ms / 1000,
            # A commit still waiting when the transaction times out is lost anyway; give
            # up sooner, roll back, and keep serving the group (a rebalance may be what
            # it waits for).
            commit_timeout_s=self.settings.transaction_timeout_ms / 2000,
            state=state,
            slot_failure=lambda: self.fatal,
        )
        self.rebalancer = Rebalancer(
            self.router,
            self.slots,
            self.flow,
            self.watermarks,
            self.sampler,
            self.changelogs,
            self.metrics,
            self.topic_partitions,
            timeout,
            drain=self._drain,
            rollback=self._rollback,
            fail=self._fail,
        )
        self.rebalancer.coordinator = self.coordinator

    def run(self) -> None:
        """Process until `stop`; raises on failure."""
        if self.consumer is None:
            self.prepare()
        self._start_slots()
        if self.changelogs:
            self.restorer = Restorer(
                self.settings.restore_consumer(),
                self.admin,
                self.store,
                self.changelogs.operators,
                self.metrics,
                # A restore may wait for a dead worker's open transaction: the broker
                # aborts it after its timeout, checking every 10 s by default.
                stall_timeout_s=max(60.0, 2 * self.settings.transaction_timeout_ms / 1000 + 20),
                standby=self.config.standby_replicas > 0,
            )
            self.restorer.start()
            self.rebalancer.restorer = self.restorer
            self.rebalancer.standby = self.config.standby_replicas > 0
        r = self.rebalancer
        self.consumer.subscribe(r.on_assign, r.on_revoke, r.on_lost)
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
        flow, rebalancer = self.flow, self.rebalancer
        records_in = self.metrics.records_in
        job = self.job.name
        in_counters: dict[TopicPartitionKey, Any] = {}
        progress = SlotProgress(self.slots, consumer, router, lambda: coordinator.committed)
        last_sample = last_watermark = time.monotonic()
        self.state = "running"
        while not self.stopping.is_set():
            # Step 1-2
            if flow.update(self.slots.slots, rebalancer.restoring, router.feeds):
                msgs = []
                time.sleep(0.002)  # every slot is full: let them drain
            else:
                # Short waits while a checkpoint is in flight, so its commit follows
                # the slots' acknowledgements promptly.
                wait = 0.005 if coordinator.pending is not None else 0.05
                msgs = consumer.consume(flow.fetch_size, wait)
            try:  # Step 3
                self.output.poll()
            except TransactionFailed as exc:
                self._rollback(str(exc))
            self._check_fatal()  # Step 4
            if rebalancer.restoring:  # Step 5
                rebalancer.restores_done()
            if msgs:  # Step 6
                per_slot, counts = router.route(self._without_errors(msgs))
                for slot, batches in zip(self.slots, per_slot, strict=True):
                    for batch in batches:
                        slot.inbox.put(SOURCES, FETCHER, batch, len(batch.elems))
                for tp, n in counts.items():
                    counter = in_counters.get(tp)
                    if counter is None:
                        counter = in_counters[tp] = records_in.labels(job, tp[0], str(tp[1]))
                    counter.inc(n)
            try:  # Step 7
                coordinator.poll()
                if coordinator.due():
                    coordinator.trigger()
            except CheckpointFailed as exc:
                self._rollback(f"checkpoint failed: {exc}")
            now = time.monotonic()  # Step 8
            if self.watermarks and now - last_watermark >= 0.1:
                if self.watermarks.advance(now, router.pins, rebalancer.restoring, progress):
                    lag = max(0.0, time.time() - self.watermarks.watermark / 1000)
                    self.metrics.watermark_lag.set(lag)
                self.slots.tick(self.watermarks.watermark)
                last_watermark = now
            if now - last_sample >= 1.0:
                self.sampler.sample(
                    now - last_sample,
                    self.slots,
                    flow.full_slots,
                    router.partitions,
                    consumer,
                    coordinator.committed,
                    self.store,
                )
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

    # -- slots ----------------------------------------------------------------
    def _start_slots(self) -> None:
        self.slots.start(self.output.producer, self.coordinator.ack, self.store, self.size_limits)
        if self.watermarks:
            self.slots.assign_ownership(self.router, self.rebalancer.restoring)
            self.slots.tick(self.watermarks.watermark)

    def _on_slot_fatal(self, exc: BaseException) -> None:
        log.error("slot failed: %s: %s", type(exc).__name__, exc)
        self.fatal = exc

    def _fail(self, exc: WorkerFailed) -> None:
        """Stop at the next loop iteration (from a callback that must not raise)."""
        log.error("%s", exc)
        self.fatal = exc

    def _check_fatal(self) -> None:
        """A slot failed: restart from the last checkpoint (Flink's restart strategies),
        or give up with the cause once the attempts are spent."""
        if self.fatal is None:
            return
        exc, self.fatal = self.fatal, None
        if isinstance(exc, WorkerFailed):  # the job's error policy says stop
            raise exc
        cause = f"{type(exc).__name__}: {exc}"
        delay = self.restarts.next_delay(cause, exc)
        self.metrics.restarts.labels(self.job.name).inc()
        log.warning(
            "slot failed (%s); restart %d of %d from the last checkpoint in %.1fs",
            cause,
            self.restarts.restarts,
            self.restarts.attempts,
            delay,
        )
        self.stopping.wait(delay)
        self._rollback(f"restart after: {cause}")

    # -- checkpoints and failure ----------------------------------------------------
    def _drain(self, why: str) -> None:
        try:
            self.coordinator.drain(self.config.shutdown_timeout_s)
        except CheckpointFailed as exc:
            self._rollback(f"checkpoint before {why} failed: {exc}")

    def _rollback(self, reason: str) -> None:
        """Return to the last committed checkpoint: abort, seek back, fresh slots."""
        log.warning("rolling back to the last committed checkpoint: %s", reason)
        self.slots.stop(self.config.shutdown_timeout_s)
        self.output.restart()
        committed = self._seek_to_committed()
        self.router.reset_positions()
        self.coordinator.reset(committed)
        self.flow.reset(self.rebalancer.restoring)
        self._start_slots()

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
        self.slots.stop(self.config.shutdown_timeout_s)
        self.output.close(self.config.shutdown_timeout_s)
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
        if self.rebalancer is not None:
            self.rebalancer.failed = True
        self.slots.stop(5.0)
        self.output.abandon()
        with contextlib.suppress(KafkaException, RuntimeError):
            self.consumer.close()
        self._close_state()
