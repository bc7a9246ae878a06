"""The checkpoint coordinator: barriers in, one commit out.

A checkpoint N, in order (the code marks each step):

1. **Barrier.** Snapshot the fetcher's read positions (the next offset of every
   partition routed so far) and, with them, the watermarks to announce into
   repartition topics and the tables of what was announced into the ones read
   (`weir.service.repartition_watermarks`); put barrier N into every slot's inbox,
   behind the last batch fetched for it.
2. **Align.** Each slot passes N on all of its inputs (`weir.service.slots`) and
   acknowledges; from then on it holds the outputs it produces, which belong to
   checkpoint N+1.
   With it, each slot hands over its epoch's state writes, whose changelog
   records it has already produced.
3. **Commit.** When every slot has acknowledged: write the watermark control
   records of step 1 (they follow every record of the epoch in each repartition
   partition); then
   exactly-once — ``send_offsets_to_transaction`` (positions of step 1, each with
   the group metadata of the member reading it and, for a repartition partition,
   its table as the offset's metadata; a transaction that moved no input
   sends the committed offsets again, so the group still checks this worker's
   generation) and ``commit_transaction``, then begin the next transaction;
   at-least-once — ``flush`` (every output and changelog record before the
   barrier is acknowledged by the broker) and commit the positions.
4. **Apply.** Write the epoch's state to RocksDB in one batch, with the
   changelog offsets it is complete up to and the checkpoint id.
5. **Release.** Tell every slot that N is committed; held outputs go out into
   the next transaction.

One checkpoint is in flight at a time. A failed step 3 raises
`CheckpointFailed`; the worker then rolls back to the last committed
checkpoint (abort, seek back, fresh slots).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from weir.operators.chain import Barrier
from weir.service.changelog import Changelogs
from weir.service.config import WorkerConfig
from weir.service.consumers import GroupConsumers
from weir.service.deadline import retry_while_unavailable
from weir.service.exceptions import DuplicateWorker, WorkerFailed
from weir.service.metrics import Metrics
from weir.service.repartition_watermarks import ChannelCheckpoint, WatermarkChannels
from weir.service.router import SlotRouter
from weir.service.slots import FETCHER, SOURCES, Release, Slot
from weir.service.transaction import TransactionalOutput, TransactionAmbiguous, TransactionFailed
from weir.state.exceptions import StateDirectoryLocked, StateError
from weir.state.store import StateStore, Write

log = logging.getLogger(__name__)


class CheckpointFailed(Exception):
    """Step 3 failed; nothing of this checkpoint is committed."""


class CheckpointAmbiguous(CheckpointFailed):
    """Step 3 may have committed on the broker: roll back, and take the state from the
    changelogs again rather than assume either outcome."""


class CheckpointTimedOut(CheckpointFailed):
    """Step 2 did not finish within the checkpoint timeout: a slot is stuck (a hung or
    too slow function). The message says where."""


@dataclass(frozen=True)
class StateCommit:
    """Where step 4 writes: the store, and the changelogs it records offsets of."""

    store: StateStore
    changelogs: Changelogs
    admin: AdminClient
    timeout_s: float
    broker_timeout_s: float
    stopping: threading.Event

    @classmethod
    def open(
        cls,
        path: Path,
        changelogs: Changelogs,
        admin: AdminClient,
        config: WorkerConfig,
        stopping: threading.Event,
    ) -> StateCommit:
        """Open the local store at ``path``; a directory another live process holds is a
        `DuplicateWorker`, any other unusable one a `WorkerFailed` — one line each."""
        try:
            store = StateStore(path, changelogs.states)
        except StateDirectoryLocked as exc:
            raise DuplicateWorker(str(exc)) from None
        except StateError as exc:
            raise WorkerFailed(str(exc)) from None
        timeouts = (config.connect_timeout_s, config.broker_timeout_s)
        return cls(store, changelogs, admin, *timeouts, stopping)


@dataclass
class Pending:
    """A checkpoint between its barrier and its commit."""

    id: int
    started: float
    positions: dict[tuple[str, int], int]
    first_timestamps: list[int]
    marks: ChannelCheckpoint | None = None
    acked: set[int] = field(default_factory=set)
    aligned_at: float | None = None
    writes: list[Write] = field(default_factory=list)


@dataclass
class CheckpointRecord:
    """What /status shows about a finished checkpoint."""

    id: int
    status: str
    duration_s: float
    alignment_s: float
    offsets: int
    reason: str = ""


class CheckpointCoordinator:
    """Runs checkpoints for one worker process; called from the fetcher thread only."""

    def __init__(
        self,
        consumer: GroupConsumers,
        output: TransactionalOutput,
        router: SlotRouter,
        slots: Callable[[], Sequence[Slot]],
        metrics: Metrics,
        interval_s: float,
        commit_timeout_s: float = 30.0,
        timeout_s: float = 7.0,
        state: StateCommit | None = None,
        slot_failure: Callable[[], BaseException | None] = lambda: None,
        channels: WatermarkChannels | None = None,
    ) -> None:
        self.consumer = consumer
        self.channels = channels or None  # None when no repartition topic carries watermarks
        self.output = output
        self.router = router
        self.slots = slots
        self.metrics = metrics
        self.interval_s = interval_s
        self.commit_timeout_s = commit_timeout_s
        self.timeout_s = timeout_s
        self.stalled: str | None = None  # why the last checkpoint timed out, until one completes
        self.state = state
        self.slot_failure = slot_failure
        self.acks: queue.SimpleQueue[tuple[int, int, list[Write]]] = queue.SimpleQueue()
        self.next_id = 1 + (state.store.last_checkpoint() if state is not None else 0)
        self.stateful_commits = 0
        self._crash_after = _fault_injection()
        self.pending: Pending | None = None
        self.committed: dict[tuple[str, int], int] = {}
        self.last_completed = time.monotonic()
        self.history: list[CheckpointRecord] = []
        self.prove_ownership = False  # commit the next checkpoint even if nothing changed

    def ack(self, slot: int, checkpoint_id: int, writes: list[Write]) -> None:
        """Called by slot threads when they have passed a barrier on all inputs."""
        self.acks.put((slot, checkpoint_id, writes))

    def due(self) -> bool:
        return self.pending is None and time.monotonic() - self.last_completed >= self.interval_s

    # -- the protocol ----------------------------------------------------------
    def trigger(self) -> None:
        """Step 1: snapshot positions and inject barrier N into every slot."""
        assert self.pending is None, "one checkpoint at a time"
        router = self.router
        positions = dict(router.positions)
        stamps, router.first_timestamps = router.first_timestamps, []
        marks = self.channels.checkpoint() if self.channels is not None else None
        self.pending = Pending(self.next_id, time.monotonic(), positions, stamps, marks)
        barrier = Barrier(self.next_id)
        self.next_id += 1
        for slot in self.slots():
            slot.inbox.put(SOURCES, FETCHER, barrier)

    def poll(self, timeout: float = 0.0) -> bool:
        """Step 2: collect acknowledgements; run steps 3-4 once all slots are in.

        Returns True when a checkpoint completed.
        """
        pending = self.pending
        if pending is None:
            return False
        deadline = time.monotonic() + timeout
        n_slots = len(self.slots())
        while len(pending.acked) < n_slots:
            failure = self.slot_failure()
            if failure is not None:  # a failed slot never passes the barrier: stop waiting
                reason = f"a slot failed: {type(failure).__name__}: {failure}"
                self._finish(pending, "failed", 0, reason)
                raise CheckpointFailed(reason)
            if time.monotonic() - pending.started > self.timeout_s:
                self._time_out(pending)
            remaining = deadline - time.monotonic()
            try:
                slot, cid, writes = self.acks.get(timeout=min(max(remaining, 0.0001), 0.1))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return False
                continue
            if cid == pending.id:
                pending.acked.add(slot)
                pending.writes.extend(writes)
        pending.aligned_at = time.monotonic()
        self._commit(pending)
        return True

    def _laggards(self, pending: Pending) -> str:
        """The slots that have not passed the barrier yet, and where they are."""
        waiting = [s for s in self.slots() if s.slot not in pending.acked]
        where = [s.stuck_in() or f"slot {s.slot} is aligning" for s in waiting]
        return "; ".join(where) or "no slot is missing"

    def _time_out(self, pending: Pending) -> None:
        age = time.monotonic() - pending.started
        reason = (
            f"checkpoint {pending.id} did not complete within {self.timeout_s:.0f}s"
            f" ({age:.1f}s): {self._laggards(pending)}"
        )
        raise self.timed_out(reason)

    def timed_out(self, reason: str) -> CheckpointTimedOut:
        """The checkpoint waited on did not complete in time (``reason`` says where the
        worker is stuck): it failed, and `overdue` gives the reason until one completes."""
        log.error("%s", reason)
        self.stalled = reason
        if self.pending is not None:
            self._finish(self.pending, "failed", 0, reason)
        return CheckpointTimedOut(reason)

    def waiting(self, now: float) -> tuple[int, float]:
        """The checkpoint the worker waits for, and for how long: since its trigger while
        in flight; otherwise since it fell due (0.0 before) — the fetch loop triggers a
        due checkpoint at once unless its thread is held (`weir.service.inline`)."""
        pending = self.pending
        if pending is not None:
            return pending.id, now - pending.started
        return self.next_id, max(0.0, now - self.last_completed - self.interval_s)

    def overdue(self) -> str | None:
        """Why checkpoints are not completing, for /ready: one in flight for more than
        half the timeout, or the last one timed out and none completed since."""
        pending = self.pending
        if pending is not None:
            age = time.monotonic() - pending.started
            if age > self.timeout_s / 2:
                return (
                    f"checkpoint {pending.id} in flight for {age:.1f}s: {self._laggards(pending)}"
                )
        return self.stalled

    def _commit(self, pending: Pending) -> None:
        """Steps 3 to 5."""
        changed = {
            tp: off
            for tp, off in pending.positions.items()
            if tp in self.router.pins and self.committed.get(tp) != off
        }
        marks = pending.marks
        tables = marks.metadata if marks is not None else {}
        offsets = [_offset(t, p, off, tables) for (t, p), off in changed.items()]
        # Step 3: commit outputs, watermarks announced and input positions together.
        announce = marks is not None and bool(marks.records)
        if announce:
            marks.write(self.output.producer)
        prove, self.prove_ownership = self.prove_ownership, False
        if self.output.exactly_once and not (offsets or pending.writes or prove or announce):
            members = None  # nothing moved and nothing changed: nothing to commit
        elif self.output.exactly_once:
            members = self.consumer.by_member(offsets or self._fencing(tables))
        else:
            members = self.consumer.by_member(offsets)
        try:
            if members is None:
                self.output.check_deliveries()
            elif not self.output.commit(members, self.commit_timeout_s):
                changed = {}  # not committed: the next checkpoint commits newer ones
        except TransactionAmbiguous as exc:
            self._finish(pending, "failed", len(offsets), f"outcome unknown: {exc}")
            raise CheckpointAmbiguous(str(exc)) from exc
        except TransactionFailed as exc:
            self._finish(pending, "failed", len(offsets), str(exc))
            raise CheckpointFailed(str(exc)) from exc
        self.committed.update(changed)
        if marks is not None:
            self.channels.committed(marks)
        # Step 4: the committed epoch's state goes to RocksDB, with its changelog offsets.
        if self.state is not None:
            self._apply(pending)
        # Step 5: release outputs held since the barrier.
        for slot in self.slots():
            slot.inbox.put(SOURCES, FETCHER, Release(pending.id))
        now_ms = time.time() * 1000
        for ts in pending.first_timestamps:
            if ts > 0:
                self.metrics.end_to_end_latency.observe(max(0.0, (now_ms - ts) / 1000))
        self._finish(pending, "completed", len(offsets))

    def _fencing(self, tables: dict[tuple[str, int], str]) -> list[TopicPartition]:
        """Offsets to send with a transaction that moved no input (state changed by
        timers or by an idle watermark): the committed ones again, with the tables
        they carry. Committing offsets is what makes the group check this worker's
        generation, so a worker the group has evicted cannot commit such a transaction
        for partitions it no longer owns."""
        loaded = self.channels.loaded if self.channels is not None else lambda _: True
        # A repartition partition whose table is not read yet is left out: its offset
        # committed again without the table would erase it.
        return [
            _offset(t, p, off, tables)
            for (t, p), off in self.committed.items()
            if (t, p) in self.router.pins and loaded((t, p))
        ]

    def _apply(self, pending: Pending) -> None:
        offsets: dict[tuple[str, int], int] = {}
        if pending.writes:
            # Committed already: this must not fail for a broker that just went away.
            state = self.state
            offsets = retry_while_unavailable(
                lambda: state.changelogs.end_offsets(state.admin, pending.writes, state.timeout_s),
                state.broker_timeout_s,
                state.stopping,
                "reading changelog end offsets",
                refresh=lambda: state.admin.list_topics(timeout=state.timeout_s),
            )
            self.stateful_commits += 1
            if self.stateful_commits == self._crash_after:
                log.error("fault injection: exiting between commit and state write")
                os._exit(86)
        self.state.store.apply(pending.writes, offsets, pending.id)
        for slot in self.slots():
            if slot.state is not None:
                slot.state.applied()

    def _finish(self, pending: Pending, status: str, offsets: int, reason: str = "") -> None:
        now = time.monotonic()
        duration = now - pending.started
        alignment = (pending.aligned_at or now) - pending.started
        self.pending = None
        self.last_completed = now
        self.metrics.checkpoints.labels(self.metrics.job, status).inc()
        self.metrics.checkpoint_duration.observe(duration)
        self.metrics.checkpoint_alignment.observe(alignment)
        if status == "completed":
            self.metrics.last_checkpoint_id.set(pending.id)
            self.stalled = None
        record = CheckpointRecord(pending.id, status, duration, alignment, offsets, reason)
        self.history.append(record)
        del self.history[:-20]
        log.debug("checkpoint %d %s in %.3fs (%d offsets)", pending.id, status, duration, offsets)

    def drain(self, timeout: float) -> None:
        """Complete the in-flight checkpoint, then take one more, synchronously.

        Used on rebalances and shutdown: afterwards every record fetched so far
        is processed and committed, and no slot holds anything.
        """
        deadline = time.monotonic() + timeout
        if self.pending is None:
            self.trigger()
        elif not self.poll(max(0.0, deadline - time.monotonic())):
            raise CheckpointFailed(f"slots did not pass the barrier within {timeout:.0f}s")
        else:
            self.trigger()
        if not self.poll(max(0.0, deadline - time.monotonic())):
            raise CheckpointFailed(f"slots did not pass the barrier within {timeout:.0f}s")

    def reset(self, committed: dict[tuple[str, int], int]) -> None:
        """Forget the in-flight checkpoint after a rollback."""
        if self.pending is not None:
            self._finish(self.pending, "aborted", 0)
        while not self.acks.empty():
            self.acks.get_nowait()
        self.committed = dict(committed)


def _offset(topic: str, partition: int, offset: int, tables: dict) -> TopicPartition:
    """An offset to commit, with the partition's watermark table as its metadata."""
    table = tables.get((topic, partition))
    if table is None:
        return TopicPartition(topic, partition, offset)
    return TopicPartition(topic, partition, offset, table)


def _fault_injection() -> int:
    """``WEIR_FAULT_INJECT=crash-after-commit:N``: exit between the N-th stateful
    commit and its RocksDB write (for the recovery tests); 0 = never."""
    spec = os.environ.get("WEIR_FAULT_INJECT", "")
    name, _, count = spec.partition(":")
    return int(count) if name == "crash-after-commit" and count.isdigit() else 0
