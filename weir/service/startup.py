"""Opening a worker: Kafka, the job's topics and state checked, the clients open.

`open_worker`, before the fetch loop starts, in this order:

1. Connect an admin client, retrying while Kafka is unreachable (the worker
   reports what it waits for).
2. Check the job's user topics and create Weir's own (repartition, dead-letter);
   read what each written topic accepts. A job writing more upstream partitions into
   a repartition topic than its offsets' metadata can carry stops here.
3. Before any changelog is created: does the job still claim the group's keyed state
   (`weir.service.upgrade`; renames copied, state left behind refused)?
4. Create the changelogs, read their limits, open local state (`StateCommit`).
5. Open the transactional producer, the topic-limits refresher, the group's
   consumers, flow control, the checkpoint coordinator, the watermark progress
   view, the rebalancer and the restorer.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from weir.service.checkpoint import CheckpointCoordinator, StateCommit
from weir.service.consumers import GroupConsumers
from weir.service.deadline import retry_while_unavailable
from weir.service.exceptions import JobLoadError
from weir.service.flow import FlowControl
from weir.service.rebalance import Rebalancer
from weir.service.restore import Restorer
from weir.service.state_rename import copy_state
from weir.service.topics import (
    LimitsRefresher,
    TopicLimits,
    capped,
    connect_admin,
    provision_job_topics,
)
from weir.service.upgrade import check_state
from weir.service.watermarks import SlotProgress

if TYPE_CHECKING:
    from weir.service.worker import Worker


def open_worker(w: Worker) -> None:
    """The steps above; the owners they open become the worker's."""
    cfg, timeout = w.config, w.config.connect_timeout_s
    w.state = "connecting"
    w.admin = admin = retry_while_unavailable(  # Step 1
        lambda: connect_admin(w.settings, cfg.bootstrap, timeout),
        cfg.broker_timeout_s,
        w.stopping,
        "connecting",
        w.note_unavailable,
    )
    counts, limits = provision_job_topics(admin, w.plan, timeout)  # Step 2
    w.limits = _within_producer(w, limits)
    w.topic_partitions.update(counts)  # the dict the watermark channels read
    too_many = w.channels.check()
    if too_many is not None:
        raise JobLoadError(too_many)
    check_state(  # Step 3
        admin,
        w.plan,
        cfg.allow_state_reset,
        cfg.rename_state,
        lambda old, topic, new: copy_state(w.settings, admin, old, topic, new, timeout),
        timeout,
    )
    state = None
    if w.changelogs:  # Step 4
        w.changelogs.provision(admin, timeout)
        w.limits.update(_within_producer(w, w.changelogs.limits(admin, timeout)))
        path = Path(cfg.state_dir) / w.group / w.worker_id
        state = StateCommit.open(path, w.changelogs, admin, cfg, w.stopping)
        w.store = state.store
    w.output.open(w.limits)  # Step 5
    w.limits_refresher = LimitsRefresher(
        admin, w.limits, partial(_adjust_limit, w), partial(_limits_changed, w),
        cfg.topic_config_refresh_s,
    )  # fmt: skip
    w.consumer = GroupConsumers(
        w.settings,
        {"source": w.plan.user_source_topics, "repartition": w.plan.repartition_topics},
        admin,
    )
    w.flow = FlowControl(w.consumer, cfg.slot_queue_records, cfg.batch_size, cfg.slot_queue_bytes)
    w.coordinator = CheckpointCoordinator(
        w.consumer,
        w.output,
        w.router,
        lambda: w.slots.slots,
        w.metrics,
        cfg.checkpoint_interval_ms / 1000,
        # A commit still waiting when the transaction times out is lost anyway; give
        # up sooner, roll back, and keep serving the group (a rebalance may be what
        # it waits for).
        commit_timeout_s=w.settings.transaction_timeout_ms / 2000,
        timeout_s=cfg.checkpoint_timeout_ms / 1000,
        state=state,
        slot_failure=lambda: w.recovery.fatal,
        channels=w.channels,
    )
    w.progress = SlotProgress(
        w.slots, w.consumer, w.router, lambda: w.coordinator.committed,
        w.channels, lambda: w.flow.paused,
    )  # fmt: skip
    w.rebalancer = Rebalancer(
        w.router,
        w.slots,
        w.flow,
        w.watermarks,
        w.channels,
        w.consumer,
        w.sampler,
        w.changelogs,
        w.metrics,
        w.topic_partitions,
        timeout,
        drain=w.recovery.drain,
        rollback=w.recovery.rollback,
        fail=w.recovery.fail,
        duplicate=w.duplicate,
    )
    w.rebalancer.coordinator = w.coordinator
    if w.changelogs:
        w.rebalancer.restorer = Restorer.for_worker(
            w.settings, admin, w.store, w.changelogs, w.metrics, cfg
        )


def _within_producer(w: Worker, limits: dict[str, TopicLimits]) -> dict[str, TopicLimits]:
    """Written topics' limits, never above what the producer sends (`capped`)."""
    return {topic: _adjust_limit(w, topic, limit) for topic, limit in limits.items()}


def _adjust_limit(w: Worker, _topic: str, limit: TopicLimits) -> TopicLimits:
    """A written topic's limit, as read (at start or again): never more than the producer
    sends."""
    return capped(limit, w.settings.producer_max_bytes)


def _limits_changed(w: Worker, topics: set[str]) -> None:
    """Changelog limits changed: the slots' epoch buffers refuse by the new ones."""
    if topics & set(w.changelogs.topics):
        w.slots.set_record_limits(w.limits)
