"""The fetch loop: the worker's main thread, from start until it is asked to stop.

Each iteration:

1. Flow control decides whether to consume and how much (every slot full: wait
   2 ms for them to drain instead).
2. Consume a batch from the group's consumers — rebalance callbacks run inside
   this call; short waits while a checkpoint is in flight, so its commit follows
   the slots' acknowledgements promptly.
3. Serve the producer's reports (a failed delivery rolls back).
4. Restart the slots if one failed, per the restart strategy (`Recovery`).
5. Resume partitions whose restore finished.
6. Route the batch to the slots — unless a rollback happened meanwhile: then the
   records are stale (`Recovery.stale`) — or run it through the one slot's chain
   here (`weir.service.inline`), and hand the watermark control records among them
   to the channels, after the records before them.
7. Collect checkpoint acknowledgements, commit, trigger the next checkpoint when
   due; a checkpoint past its timeout is a stuck slot (the restart strategy
   decides), a failed or ambiguous one rolls back.
8. Every 100 ms advance the watermarks and tell the slots; every second re-read the
   written topics' limits, sample the gauges and the status page's history.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from weir.service.checkpoint import CheckpointAmbiguous, CheckpointFailed, CheckpointTimedOut
from weir.service.transaction import TransactionFailed

if TYPE_CHECKING:
    from weir.service.worker import Worker

WATERMARK_EVERY_S = 0.1
SAMPLE_EVERY_S = 1.0


def fetch_loop(w: Worker) -> None:
    """Run the steps above until ``w.stopping`` is set; raises on failure."""
    consumer, router, coordinator = w.consumer, w.router, w.coordinator
    flow, rebalancer, progress, recovery = w.flow, w.rebalancer, w.progress, w.recovery
    last_sample = last_watermark = time.monotonic()
    while not w.stopping.is_set():
        rollbacks = recovery.rollbacks
        if flow.update(w.slots.slots, rebalancer.restoring, router.feeds):  # Step 1
            msgs = []
            time.sleep(0.002)
        else:  # Step 2
            wait = 0.005 if coordinator.pending is not None else 0.05
            msgs = consumer.consume(flow.fetch_size, wait)
        in_consume = recovery.rollbacks != rollbacks
        try:  # Step 3
            w.output.poll()
        except TransactionFailed as exc:
            recovery.rollback(str(exc))
        recovery.check_fatal()  # Step 4
        if rebalancer.restoring:  # Step 5
            rebalancer.restores_done()
        if recovery.rollbacks != rollbacks and msgs:  # Step 6
            msgs = recovery.stale(msgs, in_consume)
        if msgs:
            per_slot, counts, control = router.route(msgs)
            try:
                if not w.inline.run(per_slot):
                    w.slots.dispatch(per_slot)
            except CheckpointTimedOut as exc:  # the chain, run here, hung
                recovery.fatal = exc
            w.metrics.count_in(counts)
            if control:
                w.channels.observe(control)
        try:  # Step 7
            coordinator.poll()
            if coordinator.due():
                coordinator.trigger()
        except CheckpointTimedOut as exc:
            recovery.fatal = exc
        except CheckpointAmbiguous as exc:
            recovery.rollback(f"checkpoint outcome unknown: {exc}", resync=True)
        except CheckpointFailed as exc:
            recovery.rollback(f"checkpoint failed: {exc}")
        now = time.monotonic()  # Step 8
        if w.watermarks and now - last_watermark >= WATERMARK_EVERY_S:
            if w.watermarks.advance(now, router.pins, rebalancer.restoring, progress):
                lag = max(0.0, time.time() - w.watermarks.watermark / 1000)
                w.metrics.watermark_lag.set(lag)
            w.slots.tick(w.watermarks.watermarks)
            last_watermark = now
        if now - last_sample >= SAMPLE_EVERY_S:
            w.limits_refresher.poll(now)
            w.sampler.sample()
            w.history.sample(now)
            last_sample = now
