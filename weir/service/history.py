"""The worker's recent figures, for the status page: a bounded ring of one sample a
second (throughput, consumer lag, watermark lag, checkpoint duration) and the
per-task figures of the job graph (`weir.service.graph`).

`History.sample` runs on the fetcher thread once a second, after the metrics sampler
(it reads the lag that sampler computed). Each sample:

1. Reads the slots' cumulative counters (`weir.service.slots.SlotStats`: records and busy
   seconds per task, records produced per topic) and flow control's seconds each slot
   was full, and takes the difference to the previous sample. A slot replaced since
   (a restart after a rollback starts fresh slots) counts from zero.
2. Keeps those differences for the last `FIGURES_S` seconds, from which the graph's
   figures come: records per second per task and written topic, the busiest slot's
   share of time in each task, and per source topic the share of time the most
   held-back slot feeding it was full (its partitions paused: backpressure).
3. Appends one point to the ring (`SAMPLES` long): records in per second from the
   job's source topics and out to its sink topics, the total consumer lag, the
   watermark's lag behind the wall clock, and the longest checkpoint completed since
   the previous point.

HTTP threads read the ring (`since`) while the fetcher appends: a deque's append and
its copy to a list are each one step under the GIL, so no lock is needed.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from weir.operators.timers import NO_TIME
from weir.service.graph import Figures, JobGraph, TaskKey

if TYPE_CHECKING:
    from weir.service.worker import Worker

SAMPLES = 300  # one a second: the last five minutes
FIGURES_S = 5  # the graph's figures are averages over this many samples


@dataclass
class _Delta:
    """What the slots did between two samples."""

    seconds: float
    records: dict[TaskKey, float]  # summed over slots
    busy: dict[tuple[int, TaskKey], float]  # per slot and task
    full: dict[int, float]  # seconds each slot was full
    produced: dict[str, float]


class History:
    """Owns the ring of recent samples and the job graph's current figures."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.graph = JobGraph.of(worker.plan)
        self.samples: deque[dict[str, Any]] = deque(maxlen=SAMPLES)
        self.figures: Figures | None = None
        self._deltas: deque[_Delta] = deque(maxlen=FIGURES_S)
        self._slots: dict[int, tuple[Any, dict[TaskKey, tuple[float, float]], dict[str, int]]] = {}
        self._full: dict[int, float] = {}
        self._checkpoint_id = 0
        self._last: float | None = None
        self._sources = set(worker.plan.user_source_topics)
        self._sinks = set(worker.plan.sink_topics)

    def sample(self, now: float | None = None, wall: float | None = None) -> None:
        """Steps 1-3; ``now`` is monotonic seconds, ``wall`` the wall clock's (epoch s)."""
        now = time.monotonic() if now is None else now
        last, self._last = self._last, now
        delta = self._delta(now - last if last is not None else 0.0)  # Step 1
        if delta.seconds > 0:
            self._deltas.append(delta)
            self.figures = self._figures()  # Step 2
        self.samples.append(self._point(delta, time.time() if wall is None else wall))  # Step 3

    def since(self, t_ms: int = 0) -> list[dict[str, Any]]:
        """The samples taken after ``t_ms`` (epoch ms), oldest first."""
        return [s for s in list(self.samples) if s["t"] > t_ms]

    def graph_json(self) -> dict[str, Any]:
        """The job graph with the current figures (none before the second sample)."""
        return self.graph.to_json(self.figures)

    # -- step 1 --------------------------------------------------------------------
    def _delta(self, seconds: float) -> _Delta:
        records: dict[TaskKey, float] = {}
        busy: dict[tuple[int, TaskKey], float] = {}
        produced: dict[str, float] = {}
        previous, self._slots = self._slots, {}
        for slot in list(self.worker.slots):
            stats = slot.stats
            tasks = {key: (counts[0], counts[1]) for key, counts in list(stats.tasks.items())}
            written = dict(stats.produced)
            self._slots[slot.slot] = (slot, tasks, written)
            before = previous.get(slot.slot)
            old_tasks, old_written = (
                ({}, {}) if before is None or before[0] is not slot else (before[1], before[2])
            )
            for key, (n, busy_s) in tasks.items():
                n0, busy0 = old_tasks.get(key, (0, 0.0))
                records[key] = records.get(key, 0.0) + n - n0
                busy[(slot.slot, key)] = busy_s - busy0
            for topic, n in written.items():
                produced[topic] = produced.get(topic, 0.0) + n - old_written.get(topic, 0)
        flow = self.worker.flow
        full_now = dict(flow.full_s) if flow is not None else {}
        full = {s: total - self._full.get(s, 0.0) for s, total in full_now.items()}
        self._full = full_now
        return _Delta(seconds, records, busy, full, produced)

    # -- step 2 --------------------------------------------------------------------
    def _figures(self) -> Figures:
        seconds = sum(d.seconds for d in self._deltas)
        records: dict[TaskKey, float] = {}
        produced: dict[str, float] = {}
        busy_by_slot: dict[tuple[int, TaskKey], float] = {}
        full: dict[int, float] = {}
        for d in self._deltas:
            for key, n in d.records.items():
                records[key] = records.get(key, 0.0) + n
            for topic, n in d.produced.items():
                produced[topic] = produced.get(topic, 0.0) + n
            for slot_key, s in d.busy.items():
                busy_by_slot[slot_key] = busy_by_slot.get(slot_key, 0.0) + s
            for slot, s in d.full.items():
                full[slot] = full.get(slot, 0.0) + s
        busy: dict[TaskKey, float] = {}
        for (_, key), s in busy_by_slot.items():
            busy[key] = max(busy.get(key, 0.0), min(1.0, s / seconds))
        backpressure: dict[str, float] = {}
        router = self.worker.router
        for slot, s in full.items():
            share = min(1.0, s / seconds)
            for topic in {t for t, _ in router.feeds(slot)}:
                backpressure[topic] = max(backpressure.get(topic, 0.0), share)
        return Figures(
            records_per_s={k: n / seconds for k, n in records.items()},
            busy=busy,
            backpressure=backpressure,
            produced_per_s={t: n / seconds for t, n in produced.items()},
        )

    # -- step 3 --------------------------------------------------------------------
    def _point(self, delta: _Delta, wall: float) -> dict[str, Any]:
        w = self.worker
        seconds = delta.seconds
        into = sum(n for key, n in delta.records.items() if key in self._sources)
        out = sum(n for topic, n in delta.produced.items() if topic in self._sinks)
        lag = list(w.sampler.lag.values())
        watermark = w.watermarks.watermark if w.watermarks else NO_TIME
        wall_ms = wall * 1000
        point: dict[str, Any] = {
            "t": int(wall_ms),
            "records_in_per_s": into / seconds if seconds else None,
            "records_out_per_s": out / seconds if seconds else None,
            "consumer_lag": sum(lag) if lag else None,
            "watermark_lag_s": max(0.0, (wall_ms - watermark) / 1000)
            if watermark > NO_TIME
            else None,
            "checkpoint_s": None,
            "checkpoints_failed": 0,
        }
        coordinator = w.coordinator
        for record in list(coordinator.history) if coordinator is not None else []:
            if record.id <= self._checkpoint_id:
                continue
            self._checkpoint_id = record.id
            if record.status == "completed":
                longest = point["checkpoint_s"] or 0.0
                point["checkpoint_s"] = max(longest, record.duration_s)
            elif record.status == "failed":
                point["checkpoints_failed"] += 1
        return point
