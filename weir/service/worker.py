"""The worker process: wires the runtime's owners together and runs the fetch loop.

Each concept has one owner (the transactional output, changelogs, checkpoint
coordinator, rebalancer, flow control, watermark tracker, slot pool, router,
restart strategy, sampler, history: docs/architecture.md lists them); the worker holds
none of their fields.

Its life: opening — Kafka, the job's topics and state checked, the clients open —
is `weir.service.startup`'s; the fetch loop (`weir.service.fetch_loop`) runs on the
main thread; a rollback to the last committed checkpoint is
`weir.service.recovery`'s; leaving, cleanly or after a failure, is
`weir.service.shutdown`'s.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from confluent_kafka import KafkaException

from weir.operators import Job
from weir.operators.physical import compile_plan
from weir.service.changelog import Changelogs
from weir.service.checkpoint import CheckpointCoordinator
from weir.service.clients import ClientSettings
from weir.service.config import WorkerConfig, check_formats
from weir.service.consumers import GroupConsumers
from weir.service.exceptions import ShutdownOverran, WorkerFailed
from weir.service.fetch_loop import fetch_loop
from weir.service.flow import FlowControl
from weir.service.history import History
from weir.service.inline import InlineChain
from weir.service.metrics import Metrics
from weir.service.rebalance import Rebalancer
from weir.service.recovery import Recovery
from weir.service.repartition_watermarks import WatermarkChannels
from weir.service.restarts import RestartStrategy
from weir.service.router import SlotRouter
from weir.service.sampler import MetricsSampler
from weir.service.shutdown import abandon, stop_cleanly
from weir.service.slot_pool import SlotPool
from weir.service.startup import open_worker
from weir.service.topics import TopicLimits
from weir.service.transaction import TransactionalOutput
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
            self.duplicate,
            config.broker_timeout_s,
            self.stopping,
        )
        self.watermarks = WatermarkTracker.for_plan(plan)
        check_formats(plan, config.registry)
        self.recovery = Recovery(self)  # reads the owners below once they are open
        self.slots = SlotPool(
            plan,
            config.slots,
            self.metrics,
            self.changelogs,
            self.recovery.slot_failed,
            registry=config.registry,
        )
        # a stateless one-slot chain runs on the fetch thread (the chain decides the rest)
        stateless = config.slots == 1 and not plan.stateful
        self.inline = InlineChain(self.slots, self.stopping, config.shutdown_timeout_s, stateless)
        self.restarts = RestartStrategy(config, self.metrics)
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
        """Check Kafka, the job's state and topics; open the clients (`weir.service.startup`)."""
        open_worker(self)

    def run(self) -> None:
        """Process until `stop`; raises on failure."""
        if self.consumer is None:
            self.prepare()
        self.start_slots()
        r = self.rebalancer
        if r.restorer is not None:
            r.restorer.start()
        self.consumer.subscribe(r.on_assign, r.on_revoke, r.on_lost)
        cfg = self.config
        log.info("worker %s running job %s: group=%s slots=%d guarantee=%s",
                 self.worker_id, self.job.name, self.group, cfg.slots, cfg.guarantee)  # fmt: skip
        self.inline.start(self.coordinator)
        try:
            self.state = "running"
            fetch_loop(self)
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
        finally:
            self.inline.stop()

    def stop(self) -> None:
        """Ask the worker to finish its current checkpoint and leave (thread-safe)."""
        self.stopping.set()

    # -- slots ----------------------------------------------------------------
    def start_slots(self) -> None:
        """Fresh slots over the open producer and store, told what they own and the time."""
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

    def duplicate(self) -> str | None:
        """Is another live worker using this worker's id? (asked after a fencing)"""
        if self.consumer is None:
            return None
        return self.consumer.other_member_with(
            self.admin, self.group, self.settings.transactional_id
        )

    def note_unavailable(self, reason: str | None) -> None:
        """What Kafka is being waited for (None: nothing), for /status."""
        self.unavailable = reason
