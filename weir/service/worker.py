"""The worker process: wires the runtime's owners together and runs the fetch loop.

Each concept has one owner (the transactional output, changelogs, checkpoint
coordinator, rebalancer, flow control, watermark tracker, slot pool, router,
restart strategy, sampler, history: docs/architecture.md lists them); the worker holds
none of their fields.

The fetch loop, on the main thread, each iteration: (1) restart the slots if one
failed, per the restart strategy; (2) flow control decides whether to consume
and how much; (3) consume a batch from the group's consumers — rebalance
callbacks run inside this call; (4) serve the producer's reports; (5) resume
partitions whose restore finished; (6) route the batch to the slots; (7) collect
checkpoint acknowledgements, commit, trigger the next checkpoint when due;
(8) every 100 ms advance the watermarks, every second sample the gauges and the
status page's history.

A failed commit, a lost assignment or an output that could not be delivered
rolls the worker back to its last committed checkpoint (`Worker._rollback`).
Leaving, cleanly or after a failure, is `weir.service.shutdown`'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from weir.operators import Job
from weir.operators.formats import needs_registry
from weir.operators.physical import PhysicalPlan, compile_plan
from weir.service.changelog import Changelogs, capped
from weir.service.checkpoint import (
    CheckpointAmbiguous,
    CheckpointCoordinator,
    CheckpointFailed,
    CheckpointTimedOut,
    StateCommit,
)
from weir.service.clients import ClientSettings
from weir.service.config import WorkerConfig
from weir.service.consumers import GroupConsumers
from weir.service.deadline import retry_while_unavailable
from weir.service.exceptions import ConfigError, JobLoadError, ShutdownOverran, WorkerFailed
from weir.service.flow import FlowControl
from weir.service.history import History
from weir.service.metrics import Metrics
from weir.service.rebalance import Rebalancer
from weir.service.repartition_watermarks import WatermarkChannels
from weir.service.restarts import RestartStrategy
from weir.service.restore import Restorer
from weir.service.router import SlotRouter
from weir.service.sampler import MetricsSampler
from weir.service.shutdown import SLOT_STOP_S, abandon, stop_cleanly
from weir.service.slot_pool import SlotPool
from weir.service.state_rename import copy_state
from weir.service.topics import (
    LimitsRefresher,
    TopicLimits,
    connect_admin,
    provision_job_topics,
)
from weir.service.transaction import TransactionalOutput, TransactionFailed
from weir.service.upgrade import check_state
from weir.service.watermarks import SlotProgress, WatermarkTracker
from weir.state.store import StateStore

log = logging.getLogger(__name__)


class Worker:
    """Runs one job in this process until stopped."""

    def __init__(self, job: Job, config: WorkerConfig, process_index: int | None = None) -> None:
        self.job = job
        self.config = config
        self.group = config.group or job.name
        self.plan = plan = compile_plan(job, self.group)
        self.topic_partitions: dict[str, int] = {}  # of every topic read, kept current
        suffix = "" if process_index is None else f".{process_index}"
        self.worker_id = f"{config.worker_id}{suffix}"
        self.settings = ClientSettings(config, self.group, f"{self.group}.{self.worker_id}")
        self.metrics = Metrics(job.name, worker_id=self.worker_id, group=self.group)
        self.channels = WatermarkChannels(
            plan.watermark_channels, self.topic_partitions, self._announcements
        )
        self.router = SlotRouter(
            config.slots,
            plan.max_key_groups,
            plan.exchanges,
            plan.everywhere_topics,
            self.channels.topics,
        )
        self.changelogs = Changelogs(plan)
        self.stopping = threading.Event()
        self.unavailable: str | None = None  # why Kafka is being waited for, if it is
        self.output = TransactionalOutput(
            self.settings,
            config.exactly_once,
            config.connect_timeout_s,
            self._duplicate,
            config.broker_timeout_s,
            self.stopping,
        )
        self.watermarks = WatermarkTracker.for_plan(plan)
        check_formats(plan, config.registry)
        self.slots = SlotPool(
            plan,
            config.slots,
            self.metrics,
            self.changelogs,
            self._on_slot_fatal,
            registry=config.registry,
        )
        self.restarts = RestartStrategy(config, self.metrics)
        self.fatal: BaseException | None = None
        self.rollbacks = 0  # records consumed before the latest one are stale (`_stale`)
        self.limits: dict[str, TopicLimits] = {}
        self.state = "starting"
        self.consumer: GroupConsumers | None = None
        self.admin: Any = None
        self.store: StateStore | None = None
        self.flow: FlowControl | None = None
        self.coordinator: CheckpointCoordinator | None = None
        self.rebalancer: Rebalancer | None = None
        self.progress: SlotProgress | None = None
        self.sampler = MetricsSampler(self)  # reads the owners above once they are open
        self.history = History(self)  # likewise

    # -- lifecycle ----------------------------------------------------------
    def prepare(self) -> None:
        """Check Kafka, the group's keyed state (`service.upgrade`) and the topics,
        create Weir's own, and open the clients."""
        cfg, timeout = self.config, self.config.connect_timeout_s
        self.state = "connecting"
        self.admin = admin = retry_while_unavailable(
            lambda: connect_admin(self.settings, cfg.bootstrap, timeout),
            cfg.broker_timeout_s,
            self.stopping,
            "connecting",
            self._note_unavailable,
        )
        counts, self.limits = provision_job_topics(admin, self.plan, timeout)
        self.topic_partitions.update(counts)  # the dict the watermark channels read
        too_many = self.channels.check()
        if too_many is not None:
            raise JobLoadError(too_many)
        # Before any changelog is created: does the job still claim the group's state?
        check_state(
            admin,
            self.plan,
            cfg.allow_state_reset,
            cfg.rename_state,
            lambda old, topic, new: copy_state(self.settings, admin, old, topic, new, timeout),
            timeout,
        )
        state = None
        if self.changelogs:
            self.changelogs.provision(admin, timeout)
            self.limits.update(
                self.changelogs.limits(admin, timeout, self.settings.producer_max_bytes)
            )
            path = Path(cfg.state_dir) / self.group / self.worker_id
            state = StateCommit.open(path, self.changelogs, admin, cfg, self.stopping)
            self.store = state.store
        self.output.open(self.limits)
        self.limits_refresher = LimitsRefresher(
            admin, self.limits, self._adjust_limit, self._limits_changed,
            cfg.topic_config_refresh_s,
        )  # fmt: skip
        self.consumer = GroupConsumers(
            self.settings,
            {"source": self.plan.user_source_topics, "repartition": self.plan.repartition_topics},
            admin,
        )
        self.flow = FlowControl(
            self.consumer, cfg.slot_queue_records, cfg.batch_size, cfg.slot_queue_bytes
        )
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
            timeout_s=cfg.checkpoint_timeout_ms / 1000,
            state=state,
            slot_failure=lambda: self.fatal,
            channels=self.channels,
        )
        self.progress = SlotProgress(
            self.slots, self.consumer, self.router, lambda: self.coordinator.committed,
            self.channels, lambda: self.flow.paused,
        )  # fmt: skip
        self.rebalancer = Rebalancer(
            self.router,
            self.slots,
            self.flow,
            self.watermarks,
            self.channels,
            self.consumer,
            self.sampler,
            self.changelogs,
            self.metrics,
            self.topic_partitions,
            timeout,
            drain=self._drain,
            rollback=self._rollback,
            fail=self._fail,
            duplicate=self._duplicate,
        )
        self.rebalancer.coordinator = self.coordinator
        if self.changelogs:
            self.rebalancer.restorer = Restorer.for_worker(
                self.settings, admin, self.store, self.changelogs, self.metrics, cfg
            )

    def run(self) -> None:
        """Process until `stop`; raises on failure."""
        if self.consumer is None:
            self.prepare()
        self._start_slots()
        r = self.rebalancer
        if r.restorer is not None:
            r.restorer.start()
        self.consumer.subscribe(r.on_assign, r.on_revoke, r.on_lost)
        cfg = self.config
        log.info("worker %s running job %s: group=%s slots=%d guarantee=%s",
                 self.worker_id, self.job.name, self.group, cfg.slots, cfg.guarantee)  # fmt: skip
        try:
            self._loop()
            stop_cleanly(self)
        except ShutdownOverran:
            self.state = "failed"  # a step is still running: touch nothing more
            raise
        except KafkaException as exc:  # e.g. a fatal producer error: one line, not a traceback
            abandon(self)
            raise WorkerFailed(f"Kafka client failed: {exc.args[0].str()}") from exc
        except BaseException:
            abandon(self)
            raise

    def stop(self) -> None:
        """Ask the worker to finish its current checkpoint and leave (thread-safe)."""
        self.stopping.set()

    def _loop(self) -> None:
        consumer, router, coordinator = self.consumer, self.router, self.coordinator
        flow, rebalancer, progress = self.flow, self.rebalancer, self.progress
        last_sample = last_watermark = time.monotonic()
        self.state = "running"
        while not self.stopping.is_set():
            rollbacks = self.rollbacks
            # Step 1-2
            if flow.update(self.slots.slots, rebalancer.restoring, router.feeds):
                msgs = []
                time.sleep(0.002)  # every slot is full: let them drain
            else:
                # Short waits while a checkpoint is in flight, so its commit follows
                # the slots' acknowledgements promptly.
                wait = 0.005 if coordinator.pending is not None else 0.05
                msgs = consumer.consume(flow.fetch_size, wait)
            in_consume = self.rollbacks != rollbacks
            try:  # Step 3
                self.output.poll()
            except TransactionFailed as exc:
                self._rollback(str(exc))
            self._check_fatal()  # Step 4
            if rebalancer.restoring:  # Step 5
                rebalancer.restores_done()
            if self.rollbacks != rollbacks and msgs:
                msgs = self._stale(msgs, in_consume)
            if msgs:  # Step 6
                per_slot, counts, control = router.route(msgs)
                self.slots.dispatch(per_slot)
                self.metrics.count_in(counts)
                if control:  # after the records before them: the watermark follows those
                    self.channels.observe(control)
            try:  # Step 7
                coordinator.poll()
                if coordinator.due():
                    coordinator.trigger()
            except CheckpointTimedOut as exc:  # a stuck slot: the restart strategy decides
                self.fatal = exc
            except CheckpointAmbiguous as exc:
                self._rollback(f"checkpoint outcome unknown: {exc}", resync=True)
            except CheckpointFailed as exc:
                self._rollback(f"checkpoint failed: {exc}")
            now = time.monotonic()  # Step 8
            if self.watermarks and now - last_watermark >= 0.1:
                if self.watermarks.advance(now, router.pins, rebalancer.restoring, progress):
                    lag = max(0.0, time.time() - self.watermarks.watermark / 1000)
                    self.metrics.watermark_lag.set(lag)
                self.slots.tick(self.watermarks.watermarks)
                last_watermark = now
            if now - last_sample >= 1.0:
                self.limits_refresher.poll(now)
                self.sampler.sample()
                self.history.sample(now)
                last_sample = now

    # -- slots ----------------------------------------------------------------
    def _start_slots(self) -> None:
        self.slots.start(
            self.output.producer,
            self.coordinator.ack,
            self.store,
            self.limits,
            self.topic_partitions,
        )
        if self.watermarks:
            self.slots.assign_ownership(self.router, self.rebalancer.restoring)
            self.slots.tick(self.watermarks.watermarks)

    def _announcements(self) -> tuple[dict, dict[str, int]]:
        """What the tracker says of every partition this worker owns, and each topic's
        watermark (for `WatermarkChannels.checkpoint`, at a barrier)."""
        restoring = self.rebalancer.restoring
        partitions = self.router.pins
        values = self.watermarks.announcements(
            time.monotonic(), partitions, restoring, self.progress
        )
        return values, self.watermarks.watermarks

    def _adjust_limit(self, topic: str, limit: TopicLimits) -> TopicLimits:
        if topic in self.changelogs.topics:
            return capped(limit, self.settings.producer_max_bytes)
        return limit

    def _limits_changed(self, topics: set[str]) -> None:
        if topics & set(self.changelogs.topics):
            self.slots.set_record_limits(self.limits)

    def _on_slot_fatal(self, exc: BaseException) -> None:
        log.error("slot failed: %s: %s", type(exc).__name__, exc)
        self.fatal = exc

    def _duplicate(self) -> str | None:
        """Is another live worker using this worker's id? (asked after a fencing)"""
        if self.consumer is None:
            return None
        return self.consumer.other_member_with(
            self.admin, self.group, self.settings.transactional_id
        )

    def _note_unavailable(self, reason: str | None) -> None:
        self.unavailable = reason

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
        self.stopping.wait(self.restarts.next_delay(cause, exc))
        self._rollback(f"restart after: {cause}")

    # -- checkpoints and failure ----------------------------------------------------
    def _drain(self, why: str) -> None:
        """A rebalance callback's synchronous checkpoint; a failure rolls back (taking
        the state from the changelogs again when the commit's outcome is unknown)."""
        try:
            self.coordinator.drain(self.config.shutdown_timeout_s)
        except CheckpointFailed as exc:
            resync = isinstance(exc, CheckpointAmbiguous)
            self._rollback(f"checkpoint before {why} failed: {exc}", resync=resync)

    def _stale(self, msgs: list[Any], in_consume: bool) -> list[Any]:
        """Records consumed before a rollback in this loop iteration: the rollback sought
        every owned partition back to its committed offset, and the fresh slots must see
        those records again from there, not these (routing them would skip what lies
        between and count them twice). A rollback inside ``consume`` (a rebalance
        callback) may precede partitions assigned later in the same call, whose records
        here are the first after their committed offsets: those partitions are sought
        back to them too (and take the watermark tables committed there)."""
        if in_consume:
            owned = set(self.router.partitions)
            again = sorted({(m.topic(), m.partition()) for m in msgs} & owned)
            self._seek_to_committed(again)
        log.info("dropped %d records consumed before the rollback", len(msgs))
        return []

    def _seek_to_committed(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Seek ``partitions`` back to their committed offsets; their watermark tables
        become what was announced up to there (the offsets' metadata)."""
        committed, metadata = retry_while_unavailable(
            lambda: self.consumer.seek_to_committed(partitions, self.config.connect_timeout_s),
            self.config.broker_timeout_s,
            self.stopping,
            "reading committed offsets",
            self._note_unavailable,
        )
        for tp in partitions:
            self.channels.load(tp, metadata.get(tp))
        return committed

    def _rollback(self, reason: str, resync: bool = False) -> None:
        """Return to the last committed checkpoint: abort, seek back, fresh slots. With
        ``resync``, the checkpoint in flight may have committed: the group's offsets say
        where the input resumes, and the state is taken from the changelogs again."""
        log.warning("rolling back to the last committed checkpoint: %s", reason)
        self.rollbacks += 1
        self.slots.stop(SLOT_STOP_S)  # a hung slot is abandoned, never waited for
        self.output.restart()
        committed = self._seek_to_committed(self.router.partitions)
        self.router.reset_positions()
        self.coordinator.reset(committed)
        self.flow.reset(self.rebalancer.restoring)
        self.watermarks.rewind()
        if resync:
            self.rebalancer.resync()
        self._start_slots()


def check_formats(plan: PhysicalPlan, registry: Mapping[str, str] | None) -> None:
    """A job whose formats need a schema registry fails at start, with one line, when
    the worker has none, instead of dead-lettering every record."""
    if registry is not None:
        return
    for where, serde in plan.formats:
        if needs_registry(serde):
            raise ConfigError(
                f"{where}={serde!r} needs a schema registry; set --schema-registry-url"
                " (WEIR_SCHEMA_REGISTRY_URL, or schema_registry_url in the config file)"
            )
