"""The watermark tracker's rules (weir/service/watermarks.py, rules 1-6), without slots or a
broker: what partitions have shown comes from `tests.fakes.Progress`, time is a number
the test advances."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes import Progress
from weir.operators.timers import NO_TIME
from weir.service.repartition_watermarks import Announced, UpstreamTable
from weir.service.watermarks import SlotProgress, SourceClock, WatermarkTracker

A0, A1, B0 = ("a", 0), ("a", 1), ("b", 0)


def tracker(ooo_ms: int = 1_000, idle_s: float | None = 5.0, at: float = 0.0, tps=(A0, A1)):
    """A tracker of source "a"; ``tps`` assigned (activated) at time ``at``."""
    t = WatermarkTracker({"a": SourceClock(ooo_ms, idle_s)})
    for tp in tps:
        t.activate(tp, at)
    return t


def test_the_watermark_is_the_minimum_of_the_partitions_max_timestamp_minus_disorder():
    t, p = tracker(), Progress()
    p.record(A0, 10_000, 1.0)
    p.record(A1, 7_000, 1.0)
    assert t.advance(1.1, [A0, A1, B0], (), p) is True
    assert t.watermark == 6_000, "min(10000, 7000) - 1000; topic b feeds no window"
    p.record(A1, 20_000, 1.2)
    t.advance(1.3, [A0, A1], (), p)
    assert t.watermark == 9_000, "now partition a-0 holds it"


def test_a_partition_without_records_holds_the_watermark_until_idle():
    t, p = tracker(at=10.0), Progress()
    p.record(A0, 10_000, 14.9)
    assert t.advance(14.9, [A0, A1], (), p) is False
    assert t.watermark == NO_TIME, "a-1 has shown nothing and is not idle yet"
    assert t.advance(15.1, [A0, A1], (), p) is True, "idle 5 s after it was assigned"
    assert t.watermark == 9_000


def test_a_restoring_partition_holds_the_watermark_where_it_is():
    t, p = tracker(), Progress()
    p.record(A0, 10_000, 1.0)
    p.record(A1, 10_000, 1.0)
    t.advance(1.0, [A0, A1], (), p)
    assert t.watermark == 9_000
    p.record(A0, 50_000, 2.0)
    p.record(A1, 50_000, 2.0)
    assert t.advance(2.0, [A0, A1], {A1}, p) is False
    assert t.watermark == 9_000
    assert t.advance(100.0, [A0, A1], {A1}, p) is False, "restoring is never idle"
    t.activate(A1, 100.0)  # its restore ended: idleness counts from now
    assert t.advance(100.1, [A0, A1], (), p) is True
    assert t.watermark == 49_000, "a-0 went idle meanwhile; a-1 counts again"


def test_idle_needs_the_timeout_and_everything_read():
    t, p = tracker(), Progress()
    p.record(A0, 100_000, 1.0)
    p.record(A1, 5_000, 1.0)
    t.advance(1.0, [A0, A1], (), p)
    assert t.watermark == 4_000
    for now in (2.0, 4.0, 6.0):
        p.record(A0, 100_000, now)  # a-0 keeps going; a-1 falls silent at 1.0
        t.advance(now, [A0, A1], (), p)
        assert t.watermark == 4_000, f"at {now}: a-1 is silent for {now - 1.0} s, not idle yet"
    p.backlog.add(A1)  # a-1 has records not read yet: not idle however long the silence
    for now in (6.5, 60.0, 600.0):
        p.record(A0, 100_000, now)
        assert t.advance(now, [A0, A1], (), p) is False
    p.backlog.discard(A1)
    p.record(A0, 100_000, 601.0)
    assert t.advance(601.0, [A0, A1], (), p) is True
    assert t.watermark == 99_000, "idle a-1 no longer holds it back"


def test_no_idle_timeout_means_never_idle():
    t, p = tracker(idle_s=None), Progress()
    p.record(A0, 100_000, 1.0)
    p.record(A1, 5_000, 1.0)
    t.advance(1.0, [A0, A1], (), p)
    p.record(A0, 200_000, 10_000.0)
    t.advance(10_000.0, [A0, A1], (), p)
    assert t.watermark == 4_000


def test_all_idle_flushes_the_highest_watermark_then_advances_with_the_wall_clock():
    t, p = tracker(), Progress()
    p.record(A0, 10_000, 1.0)
    p.record(A1, 12_000, 1.0)
    t.advance(1.0, [A0, A1], (), p)
    assert t.watermark == 9_000
    assert t.advance(6.5, [A0, A1], (), p) is True, "both idle: nothing more is coming"
    assert t.watermark == 11_000, "the highest either reached (Flink's valve flushes it)"
    t.advance(7.5, [A0, A1], (), p)
    assert t.watermark == 12_000, "then the wall clock"
    t.advance(10.0, [A0, A1], (), p)
    assert t.watermark == 14_500
    p.record(A1, 12_600, 10.5)  # a-1 wakes up behind the wall clock
    assert t.advance(10.5, [A0, A1], (), p) is False, "never goes back"
    assert t.watermark == 14_500
    t.advance(16.0, [A0, A1], (), p)  # idle again: the clock restarts from 14500
    t.advance(17.0, [A0, A1], (), p)
    assert t.watermark == 15_500


def test_right_after_a_restart_it_starts_from_the_highest_reached_watermark():
    t, p = tracker(at=0.0), Progress()
    p.floors = {A0: 50_000, A1: 40_000}
    assert t.advance(6.0, [A0, A1], (), p) is True, "no records yet, both idle"
    assert t.watermark == 50_000
    t.advance(7.0, [A0, A1], (), p)
    t.advance(8.0, [A0, A1], (), p)
    assert t.watermark == 52_000, "then with the wall clock from there"


def test_a_reached_watermark_is_a_floor_for_its_partition():
    t, p = tracker(ooo_ms=0), Progress()
    p.floors = {A0: 30_000}
    p.record(A0, 10_000, 1.0)
    p.record(A1, 50_000, 1.0)
    t.advance(1.0, [A0, A1], (), p)
    assert t.watermark == 30_000, "a-0 reached 30000 before the restart"


def test_a_partition_joining_behind_brings_its_topics_watermark_back_to_it():
    """Rule 6's exception: a partition assigned here behind the others (its new owner
    catches up on it) must not find its windows fired; the operators keep everything
    that was late late (lateness is judged per partition)."""
    t, p = tracker(), Progress()
    p.record(A0, 10_000, 1.0)
    t.advance(1.0, [A0], (), p)
    assert t.watermark == 9_000
    t.activate(A1, 2.0)
    p.record(A1, 1_000, 2.0)
    assert t.advance(2.0, [A0, A1], (), p) is True
    assert t.watermark == 0, "the minimum again"
    p.floors[A1] = 3_000  # its windows' state says it had reached 3000 elsewhere
    t.advance(2.1, [A0, A1], (), p)
    assert t.watermark == 3_000, "never below what the partition reached"
    p.record(A1, 50_000, 2.2)
    t.advance(2.2, [A0, A1], (), p)
    assert t.watermark == 9_000


def test_a_burst_then_silence_still_closes_its_windows_when_another_partition_is_empty():
    """Rule 5: with every partition idle the watermark advances with the wall clock
    "so the last windows close". Partition a-1 is empty, so it holds the watermark at
    NO_TIME until its idle timeout; a-0's only burst was read within the same
    100 ms tick as the assignment, so both turn idle on the same tick. The tracker
    then sees "no watermark yet, all idle" and takes the restored watermarks (none)
    instead of a-0's 10000: the watermark stays at NO_TIME for good, and the
    window holding the burst never closes. A burst at 0.15 s instead of 0.05 s closes it."""
    t, p = tracker(ooo_ms=0, idle_s=1.0, at=0.0), Progress()
    p.record(A0, 10_000, 0.05)
    for tick in range(1, 60):  # the worker's cadence: every 100 ms
        t.advance(round(tick * 0.1, 1), [A0, A1], (), p)
    assert t.watermark >= 10_000, "the window holding a-0's records must be able to close"


# -- repartition partitions: what the upstream announced -------------------------------------

R0, R1 = ("r", 0), ("r", 1)


def channel_tracker() -> WatermarkTracker:
    """Source "a" (out-of-orderness 1 s, idle after 5 s) writes into repartition topic "r"."""
    t = WatermarkTracker({"a": SourceClock(1_000, 5.0), "r": SourceClock(0, None, True)})
    for tp in (A0, A1, R0, R1):
        t.activate(tp, 0.0)
    return t


def table(*entries: tuple[int, bool] | None) -> UpstreamTable:
    return UpstreamTable(len(entries), [e and Announced(*e) for e in entries])


def test_a_repartition_partition_is_at_the_lowest_watermark_its_upstream_announced():
    t, p = channel_tracker(), Progress()
    p.upstream = {R0: table((50_000, False), None, (9_000, False)), R1: table()}
    assert t.advance(1.0, [R0, R1], (), p) is False, "upstream 1 announced nothing: it holds"
    p.upstream[R0] = table((50_000, False), (20_000, False), (9_000, False))
    p.upstream[R1] = table((50_000, False), (20_000, False), (9_000, False))
    assert t.advance(1.1, [R0, R1], (), p) is True
    assert t.watermarks["r"] == 9_000, "the slowest upstream partition holds it"
    p.upstream[R0].merge(2, Announced(4_000, False))
    p.upstream[R1].merge(2, Announced(30_000, True))
    assert p.upstream[R0].entries[2] == Announced(9_000, False), "an announcement never goes back"
    t.advance(1.2, [R0, R1], (), p)
    assert t.watermarks["r"] == 9_000, "r-0 still hears upstream 2 at 9000"
    p.upstream[R0].merge(2, Announced(30_000, True))
    t.advance(1.3, [R0, R1], (), p)
    assert t.watermarks["r"] == 20_000, "an idle upstream partition holds nothing back"


def test_silence_never_makes_a_repartition_partition_idle_only_its_upstream_can():
    t, p = channel_tracker(), Progress()
    p.upstream = {R0: table((10_000, False), (12_000, False))}
    t.advance(1.0, [R0], (), p)
    for now in (10.0, 100.0, 1_000.0):  # its writers stopped (killed, restarting): it holds
        assert t.advance(now, [R0], (), p) is False
        assert t.watermarks["r"] == 10_000
    p.upstream[R0] = table((10_000, True), (12_000, True))
    p.backlog.add(R0)  # their last records not read yet: not idle
    assert t.advance(1_001.0, [R0], (), p) is False
    p.backlog.discard(R0)
    t.advance(1_002.0, [R0], (), p)  # idle: the highest they announced, then the clock
    assert t.watermarks["r"] == 12_000
    t.advance(1_003.0, [R0], (), p)
    assert t.watermarks["r"] == 13_000
    fresh = channel_tracker()  # a restart with every upstream idle: the same
    fresh.advance(1.0, [R0], (), p)
    assert fresh.watermarks["r"] == 12_000


def test_a_repartition_partition_never_goes_below_its_reached_watermark():
    t, p = channel_tracker(), Progress()
    p.floors = {R0: 70_000}
    p.upstream = {R0: table((10_000, False))}
    t.advance(1.0, [R0], (), p)
    assert t.watermarks["r"] == 70_000
    assert t.advance(2.0, [R0], {R0}, p) is False, "restoring holds, as any partition"


def test_each_topic_has_its_own_watermark_and_the_workers_is_the_lowest():
    t, p = channel_tracker(), Progress()
    p.record(A0, 100_000, 1.0)
    p.record(A1, 90_000, 1.0)
    p.upstream = {R0: table((20_000, False), (30_000, False))}
    assert t.advance(1.0, [A0, A1, R0], (), p) is True
    assert t.watermarks == {"a": 89_000, "r": 20_000}, "a window behind r is not held by a"
    assert t.watermark == 20_000


def test_announcements_are_each_partitions_watermark_and_idleness():
    t, p = channel_tracker(), Progress()
    p.record(A0, 100_000, 1.0)
    p.floors = {A1: 5_000}
    got = t.announcements(7.0, [A0, A1, B0, R0], {R0}, p)
    assert got == {A0: Announced(99_000, True), A1: Announced(5_000, True)}, (
        "idle after 5 s (a-1 since it was assigned); restoring r-0 and untracked b-0 say nothing"
    )
    p.record(A1, 50_000, 6.5)
    assert t.announcements(7.0, [A1], (), p) == {A1: Announced(49_000, False)}


# -- properties -------------------------------------------------------------------------------

TPS = [A0, A1, B0]
CLOCKS = {"a": SourceClock(1_000, 2.0), "b": SourceClock(0, 5.0)}
STEP = st.one_of(
    st.tuples(st.just("record"), st.sampled_from(TPS), st.integers(0, 60_000)),
    st.tuples(st.just("backlog"), st.sampled_from(TPS), st.booleans()),
    st.tuples(st.just("restoring"), st.sampled_from(TPS), st.booleans()),
    st.tuples(st.just("tick"), st.sampled_from([0.1, 0.5, 1.0, 3.0, 6.0])),
)


def partition_watermark(tp, p: Progress) -> int:
    ts = p.max_timestamp(tp)
    seen = NO_TIME if ts is None else ts - CLOCKS[tp[0]].out_of_orderness_ms
    return max(seen, p.reached_watermark(tp))


def idle(tp, now: float, p: Progress) -> bool:
    """Rule 3, from the definition: silent past the timeout (counted from the last record
    or from activation at 0) and caught up."""
    last = max(p.last_seen(tp) or 0.0, 0.0)
    return now - last > CLOCKS[tp[0]].idle_timeout_s and p.caught_up(tp)


@settings(  # derandomized: the same examples every run
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.dictionaries(st.sampled_from(TPS), st.integers(0, 30_000)), st.lists(STEP, max_size=60))
def test_watermark_rules_hold_for_any_sequence(floors, steps):
    t = WatermarkTracker(CLOCKS)
    p = Progress()
    p.floors = dict(floors)
    for tp in TPS:
        t.activate(tp, 0.0)
    now, restoring = 0.0, set()
    idle_run: dict[str, tuple[float, int] | None] = dict.fromkeys(CLOCKS)  # all idle since
    for step in steps:
        if step[0] == "record":
            p.record(step[1], step[2], now)
            continue
        if step[0] == "backlog":
            (p.backlog.add if step[2] else p.backlog.discard)(step[1])
            continue
        if step[0] == "restoring":
            (restoring.add if step[2] else restoring.discard)(step[1])
            continue
        now += step[1]
        before = {topic: t.watermarks.get(topic, NO_TIME) for topic in CLOCKS}
        moved = t.advance(now, TPS, restoring, p)
        after = {topic: t.watermarks.get(topic, NO_TIME) for topic in CLOCKS}
        assert moved == any(after[k] > before[k] for k in CLOCKS)
        assert t.watermark == min(after.values()), "the worker's: the lowest topic's"
        for topic in CLOCKS:  # each topic on its own
            tps = [tp for tp in TPS if tp[0] == topic]
            was, got = before[topic], after[topic]
            assert got >= was, "rule 6: never goes back"
            if restoring & set(tps):
                assert got == was, "rule 2: a restoring partition holds it"
                idle_run[topic] = None
                continue
            active = [tp for tp in tps if not idle(tp, now, p)]
            if active:
                idle_run[topic] = None
                low = min(partition_watermark(tp, p) for tp in active)
                assert got == max(was, low), "rules 1, 3, 4: the minimum over active ones"
            else:
                if idle_run[topic] is None:
                    flush = max([was, *(partition_watermark(tp, p) for tp in tps)])
                    idle_run[topic] = (now, flush) if flush > NO_TIME else None
                if idle_run[topic] is None:
                    assert got == was, "rule 5: nothing reached, nothing to flush"
                    continue
                since, base = idle_run[topic]
                assert got == base + round((now - since) * 1000), "rule 5: flush, then the clock"


class _Consumer:
    """A consumer that has read partition ("a", 0) to its end, offset 10."""

    def get_watermark_offsets(self, tp, cached=True):
        return 0, 10

    def position(self, tp):
        return 10


class _Slot:
    def __init__(self, taken: int) -> None:
        self.taken = {A0: taken}


class _Router:
    def __init__(self, routed: int) -> None:
        self.positions = {A0: 10}
        self.routed = {A0: routed}


def test_a_partition_read_to_its_end_is_caught_up_only_once_its_slots_took_every_record():
    """Records read but still queued for a slow slot are not processed: the partition
    must not look idle while they wait (they would be late downstream)."""

    def progress(taken: list[int], routed: int) -> SlotProgress:
        slots = [_Slot(n) for n in taken]
        return SlotProgress(slots, _Consumer(), _Router(routed), dict, None, set)

    assert not progress([3, 4], routed=10).caught_up(A0), "3 records still queued"
    assert progress([6, 4], routed=10).caught_up(A0), "every routed record taken"
    assert progress([], routed=0).caught_up(A0), "nothing routed since the slots started"
