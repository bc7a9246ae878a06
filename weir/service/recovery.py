"""Going back to the last committed checkpoint: rollbacks, restarts of failed slots,
and the drains a rebalance takes.

A failed commit, a lost assignment, an output that could not be delivered or a
failed slot rolls the worker back (`Recovery.rollback`), in this order:

1. Stop the slots (a hung slot is abandoned, never waited for).
2. `TransactionalOutput.restart`: a fresh producer under the same transactional id
   fences the old one and aborts its transaction.
3. Seek every owned partition back to its committed offset; each repartition
   partition's watermark table becomes what was announced up to there (the
   offsets' metadata).
4. Reset the read positions, the coordinator (to the committed offsets) and flow
   control; rewind event time to what the last checkpoint recorded.
5. With ``resync`` (the commit's outcome is unknown: it may have happened), take
   every owned partition's state from its changelog again.
6. Fresh slots.

Records the fetch loop consumed before a rollback in the same iteration are
dropped (`Recovery.stale`): the seek brings them back, in order. A failed slot
goes through the restart strategy first (`Recovery.check_fatal`, Flink's restart
strategies): it waits the strategy's delay, or gives up with the cause once the
attempts are spent.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from weir.service.checkpoint import CheckpointAmbiguous, CheckpointFailed
from weir.service.deadline import retry_while_unavailable
from weir.service.exceptions import WorkerFailed
from weir.service.shutdown import SLOT_STOP_S

if TYPE_CHECKING:
    from weir.service.worker import Worker

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]


class Recovery:
    """The worker's way back to its last committed checkpoint; it reads the worker's
    owners once they are open."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.fatal: BaseException | None = None  # a failure the fetch loop acts on next
        self.rollbacks = 0  # records consumed before the latest one are stale (`stale`)

    def slot_failed(self, exc: BaseException) -> None:
        """A slot thread failed (from that thread): restart at the next iteration."""
        log.error("slot failed: %s: %s", type(exc).__name__, exc)
        self.fatal = exc

    def fail(self, exc: WorkerFailed) -> None:
        """Stop at the next loop iteration (from a callback that must not raise)."""
        log.error("%s", exc)
        self.fatal = exc

    def check_fatal(self) -> None:
        """A slot failed or got stuck: restart from the last checkpoint, or give up with
        the cause once the restart strategy's attempts are spent; a `WorkerFailed` (the
        job's error policy says stop) is raised at once."""
        if self.fatal is None:
            return
        exc, self.fatal = self.fatal, None
        if isinstance(exc, WorkerFailed):
            raise exc
        cause = f"{type(exc).__name__}: {exc}"
        self.worker.stopping.wait(self.worker.restarts.next_delay(cause, exc))
        self.rollback(f"restart after: {cause}")

    def drain(self, why: str) -> None:
        """A rebalance callback's synchronous checkpoint; a failure rolls back (taking
        the state from the changelogs again when the commit's outcome is unknown)."""
        try:
            self.worker.coordinator.drain(self.worker.config.shutdown_timeout_s)
        except CheckpointFailed as exc:
            resync = isinstance(exc, CheckpointAmbiguous)
            self.rollback(f"checkpoint before {why} failed: {exc}", resync=resync)

    def stale(self, msgs: list[Any], in_consume: bool) -> list[Any]:
        """Records consumed before a rollback in this loop iteration: the rollback sought
        every owned partition back to its committed offset, and the fresh slots must see
        those records again from there, not these (routing them would skip what lies
        between and count them twice). A rollback inside ``consume`` (a rebalance
        callback) may precede partitions assigned later in the same call, whose records
        here are the first after their committed offsets: those partitions are sought
        back to them too (and take the watermark tables committed there)."""
        if in_consume:
            owned = set(self.worker.router.partitions)
            again = sorted({(m.topic(), m.partition()) for m in msgs} & owned)
            self._seek_to_committed(again)
        log.info("dropped %d records consumed before the rollback", len(msgs))
        return []

    def rollback(self, reason: str, resync: bool = False) -> None:
        """Return to the last committed checkpoint (steps in the module doc)."""
        w = self.worker
        log.warning("rolling back to the last committed checkpoint: %s", reason)
        self.rollbacks += 1
        w.slots.stop(SLOT_STOP_S)  # Step 1
        w.output.restart()  # Step 2
        committed = self._seek_to_committed(w.router.partitions)  # Step 3
        w.router.reset_positions()  # Step 4
        w.coordinator.reset(committed)
        w.flow.reset(w.rebalancer.restoring)
        w.watermarks.rewind()
        if resync:  # Step 5
            w.rebalancer.resync()
        w.start_slots()  # Step 6

    def _seek_to_committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Seek ``partitions`` back to their committed offsets; their watermark tables
        become what was announced up to there (the offsets' metadata)."""
        w = self.worker
        committed, metadata = retry_while_unavailable(
            lambda: w.consumer.seek_to_committed(partitions, w.config.connect_timeout_s),
            w.config.broker_timeout_s,
            w.stopping,
            "reading committed offsets",
            w.note_unavailable,
        )
        for tp in partitions:
            w.channels.load(tp, metadata.get(tp))
        return committed
